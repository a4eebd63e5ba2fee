// Menus: the settings menu and each row's menu (keyboard and focus handling).

import { renderKeys, state } from './state.js';

function menuItems(menu) {
  return [...menu.querySelectorAll('[role="menuitem"]')];
}

function openMenuFor(button, menu, focusLast = false) {
  closeMenu();
  menu.hidden = false;
  button.setAttribute('aria-expanded', 'true');
  state.openMenu = { button, menu };
  const items = menuItems(menu);
  (focusLast ? items[items.length - 1] : items[0])?.focus();
}

export function closeMenu(returnFocus = false) {
  const open = state.openMenu;
  if (!open) return;
  open.menu.hidden = true;
  open.button.setAttribute('aria-expanded', 'false');
  state.openMenu = null;
  if (returnFocus) open.button.focus();
  if (state.pendingRender) renderKeys();
}

export function wireMenu(button, menu) {
  button.addEventListener('click', () => {
    if (state.openMenu?.menu === menu) closeMenu(true);
    else openMenuFor(button, menu);
  });
  button.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      openMenuFor(button, menu, e.key === 'ArrowUp');
    }
  });
  menu.addEventListener('keydown', (e) => {
    const items = menuItems(menu);
    const i = items.indexOf(document.activeElement);
    if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      closeMenu(true);
    } else if (e.key === 'ArrowDown') {
      e.preventDefault();
      items[(i + 1) % items.length]?.focus();
    } else if (e.key === 'ArrowUp') {
      e.preventDefault();
      items[(i - 1 + items.length) % items.length]?.focus();
    } else if (e.key === 'Home') {
      e.preventDefault();
      items[0]?.focus();
    } else if (e.key === 'End') {
      e.preventDefault();
      items[items.length - 1]?.focus();
    } else if (e.key === 'Tab') {
      closeMenu(false);
    }
  });
}

document.addEventListener('click', (e) => {
  const open = state.openMenu;
  if (open && !open.menu.contains(e.target) && !open.button.contains(e.target)) closeMenu();
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && state.openMenu) closeMenu(true);
});
