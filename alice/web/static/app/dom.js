// Small DOM helpers: elements are built with textContent only (never HTML strings).

export const $ = (id) => document.getElementById(id);

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

let noticeTimer = null;

// A message for the person, read out by screen readers (the notice is a live region).
export function notify(text, { sticky = false } = {}) {
  const el = $("notice");
  el.textContent = text;
  el.classList.toggle("shown", Boolean(text));
  clearTimeout(noticeTimer);
  if (text && !sticky) noticeTimer = setTimeout(() => notify(""), 8000);
}

// A modal question; resolves true when the person confirms.
export function confirmDialog(text) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
  });
}

// Call `load` whenever `sentinel` comes into view inside `root` (null: the viewport).
export function whenVisible(sentinel, root, load) {
  const observer = new IntersectionObserver(
    (entries) => {
      if (entries.some((e) => e.isIntersecting)) load();
    },
    { root, rootMargin: "200px" },
  );
  observer.observe(sentinel);
  return observer;
}
