// The page's state, shared by every part of the page, and the two redraws a part may ask for.
// Parts import this module, never the session or the keys table back: `app.js` connects the
// redraws to the functions that do them, so the modules' imports form no cycle.

export const state = {
  api: null,
  org: null,
  listing: null,
  job: null,
  // The id of a job seen unfinished in this tab, to announce how it ended.
  watchedJobId: null,
  pollTimer: null,
  openMenu: null,
  disableKey: null,
  pendingRender: false,
};

const redraws = { refresh: async () => {}, renderKeys: () => {} };

/** Called once by `app.js`: who reloads the org's keys and job, and who draws the keys table. */
export function connect(parts) {
  Object.assign(redraws, parts);
}

/** Reloads the keys and the job from the service, then redraws the page. */
export function refresh() {
  return redraws.refresh();
}

/** Redraws the keys table from the state. */
export function renderKeys() {
  redraws.renderKeys();
}
