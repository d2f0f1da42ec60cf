/**
 * Markdown to HTML for our own reports (the tables and notes that `gains.html` shows), so a browser shows real
 * tables instead of Markdown source in a `<pre>`.
 *
 * This is deliberately a small subset, not a Markdown implementation: ATX headings (`#` to `####`), paragraphs,
 * GitHub pipe tables, `- ` bullet lists, `**bold**`, `` `code` `` and `![alt](src)` images; everything else is
 * text. The reports need no more than a few table rows, which is not worth a dependency. All text is HTML-escaped
 * before any inline markup is applied, so report content (task names, file names) can never inject HTML.
 * @module
 */

/** Escapes `&`, `<`, `>` and `"` for HTML text and double-quoted attributes. */
function escapeHtml(s: string): string {
  return s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");
}

/** Placeholder delimiter for inline pieces already rendered; NUL never survives into the escaped text. */
const MARK = "\u0000";

/** Renders one line's inline markup: escapes it, then code spans, images, `\*` escapes, bold and italics. */
function inline(text: string): string {
  const pieces: string[] = [];
  const hold = (html: string) => `${MARK}${pieces.push(html) - 1}${MARK}`;
  let s = escapeHtml(text.replaceAll(MARK, "\uFFFD"));
  s = s.replace(/`([^`]+)`/g, (_, code: string) => hold(`<code>${code}</code>`));
  s = s.replace(
    /!\[([^\]]*)\]\(([^)\s]+)\)/g,
    (_, alt: string, src: string) => hold(`<img alt="${alt}" src="${src}">`),
  );
  s = s.replace(/\\\*/g, () => hold("*")); // \* is a literal asterisk
  s = s.replace(/\*\*([\s\S]+?)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/(?<![\w*])\*(?!\s)([^*]+?)\*(?![\w*])/g, "<em>$1</em>");
  return s.replace(new RegExp(`${MARK}(\\d+)${MARK}`, "g"), (_, i: string) => pieces[Number(i)]);
}

const HEADING = /^(#{1,4})[ \t]+(.*?)[ \t]*$/;
const BULLET = /^[ \t]*-[ \t]+(.*)$/;
const TABLE_SEPARATOR = /^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

/** Splits a table row into trimmed cells on unescaped pipes (`\|` is a literal pipe); outer pipes are optional. */
function cells(row: string): string[] {
  let s = row.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.replaceAll("\\|", "|").trim());
}

/** Column alignments from the separator row (`:--`, `:-:`, `--:`). */
function alignments(separator: string): (string | undefined)[] {
  return cells(separator).map((c) =>
    c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : undefined
  );
}

/** Whether `lines[i]` starts a table: a row with a pipe followed by a separator row with as many columns. */
function isTableStart(lines: string[], i: number): boolean {
  return i + 1 < lines.length && lines[i].includes("|") && TABLE_SEPARATOR.test(lines[i + 1]) &&
    lines[i + 1].includes("-") && cells(lines[i]).length === cells(lines[i + 1]).length;
}

/** Whether a line starts a block other than a paragraph (ends a paragraph). */
function startsBlock(lines: string[], i: number): boolean {
  return lines[i].trim() === "" || HEADING.test(lines[i]) || BULLET.test(lines[i]) || isTableStart(lines, i);
}

/**
 * Renders the small subset of Markdown our reports use as HTML: ATX headings (`#` to `####`), paragraphs
 * (consecutive lines joined), GitHub pipe tables (header row, `|---|` separator, body rows; header cells as
 * `<th>`, body cells as `<td>`, column alignment from the separator), `- ` bullet lists, `**bold**`,
 * `` `code` `` and `![alt](src)` images. Anything else is text. All text is HTML-escaped (`&`, `<`, `>`, `"`)
 * before inline markup is applied, so the input cannot inject HTML.
 * @param md Markdown text, e.g. a report table from `markdownPerTask`.
 * @returns An HTML fragment: one element per block, separated by newlines.
 * @example
 * ```ts
 * import { markdownToHtml } from "./html.ts";
 * const html = markdownToHtml("## Gains\n\n| task | gain |\n|---|---:|\n| **mean** | +1.2 |");
 * if (!html.includes("<table>") || !html.includes("<th>task</th>") || !html.includes("<strong>mean</strong>")) {
 *   throw new Error(`no table in ${html}`);
 * }
 * ```
 */
export function markdownToHtml(md: string): string {
  const lines = md.replace(/\r\n?/g, "\n").split("\n");
  const out: string[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === "") {
      i++;
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      const level = heading[1].length;
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      i++;
      continue;
    }
    if (isTableStart(lines, i)) {
      const header = cells(lines[i]);
      const align = alignments(lines[i + 1]);
      const attr = (c: number) => (align[c] ? ` style="text-align:${align[c]}"` : "");
      const rows: string[] = [
        "<table>",
        "<thead>",
        `<tr>${header.map((h, c) => `<th${attr(c)}>${inline(h)}</th>`).join("")}</tr>`,
        "</thead>",
      ];
      i += 2;
      const body: string[] = [];
      while (i < lines.length && lines[i].trim() !== "" && lines[i].includes("|") && !HEADING.test(lines[i])) {
        const row = cells(lines[i]);
        body.push(`<tr>${header.map((_, c) => `<td${attr(c)}>${inline(row[c] ?? "")}</td>`).join("")}</tr>`);
        i++;
      }
      if (body.length > 0) rows.push("<tbody>", ...body, "</tbody>");
      rows.push("</table>");
      out.push(rows.join("\n"));
      continue;
    }
    if (BULLET.test(line)) {
      const items: string[] = [];
      let item: RegExpMatchArray | null;
      while (i < lines.length && (item = lines[i].match(BULLET))) {
        items.push(`<li>${inline(item[1])}</li>`);
        i++;
      }
      out.push(["<ul>", ...items, "</ul>"].join("\n"));
      continue;
    }
    const para = [line.trim()];
    i++;
    while (i < lines.length && !startsBlock(lines, i)) para.push(lines[i++].trim());
    out.push(`<p>${inline(para.join("\n"))}</p>`);
  }
  return out.join("\n");
}
