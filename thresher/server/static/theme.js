// The reader's theme, applied before the page is drawn (no flash of the other one): "light" or "dark" as chosen on
// the page, or nothing to follow the system (the chat page; the review page and dashboard follow the system).
"use strict";
(function () {
  const theme = localStorage.getItem("thresher.theme");
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
})();
