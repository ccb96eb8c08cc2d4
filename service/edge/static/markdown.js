// A tiny markdown renderer for agent answers: no dependency, and safe by construction.
// The whole text is HTML-escaped FIRST; only then are the few markdown forms turned into tags
// this module writes itself (p, br, strong, em, code, pre, ul, ol, li, h3-h5, a). No character
// of the input can open a tag or an attribute, so `<img onerror=...>` stays text.
// Links: http(s) and mailto only, opened with rel="noopener noreferrer".
"use strict";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text with every HTML-significant character escaped. */
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Code is set aside before the inline rules run, so `**` inside code stays as it is.
function inline(escaped, stash) {
  let out = escaped.replace(/`([^`\n]+)`/g, (_, code) => stash(`<code>${code}</code>`));
  out = out.replace(/\[([^\]\n]+)\]\(((?:https?:\/\/|mailto:)[^\s()]+)\)/g,
    (_, label, href) => stash(`<a href="${href}" rel="noopener noreferrer" target="_blank">${label}</a>`));
  out = out.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>");
  out = out.replace(/(^|[^*\w])\*([^*\n]+)\*(?!\w)/g, "$1<em>$2</em>");
  out = out.replace(/(^|[^_\w])_([^_\n]+)_(?!\w)/g, "$1<em>$2</em>");
  return out;
}

/** Markdown to HTML that contains no markup of the input's own. */
export function renderMarkdown(source) {
  const stashed = [];
  const stash = (html) => `\u0000${stashed.push(html) - 1}\u0000`;
  // NUL cannot come from the input's markup: it is removed before anything is stashed.
  let text = escapeHtml(String(source).replace(/\u0000/g, ""));
  text = text.replace(/```[^\n]*\n([\s\S]*?)(?:```|$)/g, (_, code) => stash(`<pre><code>${code.replace(/\n$/, "")}</code></pre>`));
  const blocks = [];
  for (const block of text.split(/\n{2,}/)) {
    const lines = block.split("\n").filter((l) => l.trim() !== "");
    if (!lines.length) continue;
    const heading = lines.length === 1 && /^(#{1,3})\s+(.*)$/.exec(lines[0]);
    if (heading) {
      const level = heading[1].length + 2;
      blocks.push(`<h${level}>${inline(heading[2], stash)}</h${level}>`);
    } else if (lines.every((l) => /^\s*[-*]\s+/.test(l))) {
      const items = lines.map((l) => `<li>${inline(l.replace(/^\s*[-*]\s+/, ""), stash)}</li>`);
      blocks.push(`<ul>${items.join("")}</ul>`);
    } else if (lines.every((l) => /^\s*\d+[.)]\s+/.test(l))) {
      const items = lines.map((l) => `<li>${inline(l.replace(/^\s*\d+[.)]\s+/, ""), stash)}</li>`);
      blocks.push(`<ol>${items.join("")}</ol>`);
    } else if (lines.length === 1 && /^\u0000\d+\u0000$/.test(lines[0])) {
      blocks.push(lines[0]); // a code block on its own
    } else {
      blocks.push(`<p>${lines.map((l) => inline(l, stash)).join("<br>")}</p>`);
    }
  }
  return blocks.join("").replace(/\u0000(\d+)\u0000/g, (_, i) => stashed[Number(i)]);
}
