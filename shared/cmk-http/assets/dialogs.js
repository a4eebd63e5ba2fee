// What every dialog of the page shares: opening one, and marking a field in error.

import { closeMenu } from './menu.js';

export function openDialog(dialog) {
  closeMenu();
  if (!dialog.open) dialog.showModal();
}

for (const dialog of document.querySelectorAll('dialog')) {
  for (const b of dialog.querySelectorAll('[data-close]')) {
    b.addEventListener('click', () => dialog.close());
  }
}

export function setFieldError(input, errorEl, message) {
  errorEl.textContent = message || '';
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
}
