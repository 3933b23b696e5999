/**
 * Small element helpers. Every piece of message data reaches the page through these
 * (`textContent`, `setAttribute`, `dataset`), never through `innerHTML`.
 */

/** The element with this id; the static frame of index.html has them all. */
export function $(id: string): HTMLElement {
  const el = document.getElementById(id);
  if (!el) throw new Error(`dashboard: missing #${id}`);
  return el;
}

/** `h("span", "cls", "text")`: an element with a class and text, nothing parsed as HTML. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Shows `text` in a note element, or hides it when there is nothing to say. */
export function setNote(el: HTMLElement, text: string | null): void {
  el.textContent = text ?? "";
  el.hidden = !text;
}
