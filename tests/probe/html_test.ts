/**
 * markdownToHtml (src/probe/html.ts): the report subset (pipe tables, headings, paragraphs, lists, bold, code,
 * images) and that every piece of text is escaped before inline markup, so report content cannot inject HTML.
 */
import { assert, assertEquals } from "../_assert.ts";
import { markdownToHtml } from "../../src/probe/html.ts";

Deno.test("markdownToHtml: a pipe table with a header and two rows", () => {
  const html = markdownToHtml(
    ["| task | baseline | gain |", "|---|---|---:|", "| octid | 80.1 | +1.2 |", "|  **mean** |81.0| **+0.9** |"].join(
      "\n",
    ),
  );
  assertEquals(
    html,
    [
      "<table>",
      "<thead>",
      '<tr><th>task</th><th>baseline</th><th style="text-align:right">gain</th></tr>',
      "</thead>",
      "<tbody>",
      '<tr><td>octid</td><td>80.1</td><td style="text-align:right">+1.2</td></tr>',
      '<tr><td><strong>mean</strong></td><td>81.0</td><td style="text-align:right"><strong>+0.9</strong></td></tr>',
      "</tbody>",
      "</table>",
    ].join("\n"),
  );
});

Deno.test("markdownToHtml: short rows are padded, long rows cut to the header's columns; \\| is a pipe", () => {
  const html = markdownToHtml("| a | b |\n|---|---|\n| 1 |\n| 2 | 3 | 4 |\n| x \\| y | z |");
  assert(html.includes("<tr><td>1</td><td></td></tr>"), html);
  assert(html.includes("<tr><td>2</td><td>3</td></tr>"), html);
  assert(html.includes("<tr><td>x | y</td><td>z</td></tr>"), html);
});

Deno.test("markdownToHtml: text is escaped before markup, so nothing injects HTML", () => {
  const html = markdownToHtml(
    [
      "# <b>title</b>",
      "",
      "| task | note |",
      "|---|---|",
      '| <script>alert("x")</script> | a & b |',
      "",
      "- <img src=x onerror=alert(1)>",
      "",
      '![a" onerror="alert(1)](x.png" onload="y)',
      "",
      "**<i>bold</i>** and `<code>` & more",
    ].join("\n"),
  );
  assert(html.includes("<td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</td>"), html);
  assert(html.includes("<td>a &amp; b</td>"), html);
  assert(html.includes("<h1>&lt;b&gt;title&lt;/b&gt;</h1>"), html);
  assert(html.includes("<li>&lt;img src=x onerror=alert(1)&gt;</li>"), html);
  assert(html.includes("<strong>&lt;i&gt;bold&lt;/i&gt;</strong>"), html);
  assert(html.includes("<code>&lt;code&gt;</code> &amp; more"), html);
  // The only tags are the renderer's own, and no attribute was broken out of.
  const tags = [...html.matchAll(/<\/?([a-z0-9]+)/g)].map((m) => m[1]);
  assert(
    tags.every((t) =>
      ["h1", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "p", "strong", "code", "img"]
        .includes(t)
    ),
    tags.join(","),
  );
  assert(!/<script|<b>|<i>|onerror="|onload="/.test(html), html);
});

Deno.test("markdownToHtml: headings # to ####; ##### is text", () => {
  assertEquals(
    markdownToHtml("# One\n## Two `x`\n### Three\n#### Four\n##### Five"),
    "<h1>One</h1>\n<h2>Two <code>x</code></h2>\n<h3>Three</h3>\n<h4>Four</h4>\n<p>##### Five</p>",
  );
});

Deno.test("markdownToHtml: bullet lists", () => {
  assertEquals(
    markdownToHtml("Notes:\n\n- first **item**\n- second `item`\n\nafter"),
    "<p>Notes:</p>\n<ul>\n<li>first <strong>item</strong></li>\n<li>second <code>item</code></li>\n</ul>\n<p>after</p>",
  );
});

Deno.test("markdownToHtml: paragraphs join consecutive lines and end at a blank line or another block", () => {
  assertEquals(
    markdownToHtml("line one\n  line two\n\nnext paragraph\n## Heading\ntext\n- item"),
    "<p>line one\nline two</p>\n<p>next paragraph</p>\n<h2>Heading</h2>\n<p>text</p>\n<ul>\n<li>item</li>\n</ul>",
  );
  assertEquals(markdownToHtml(""), "");
  assertEquals(markdownToHtml("a\r\nb"), "<p>a\nb</p>");
});

Deno.test("markdownToHtml: bold, inline code (not parsed inside) and images", () => {
  assertEquals(
    markdownToHtml("**gain** `**not bold**` ![gains chart](gains.png?a=1&b=2)"),
    '<p><strong>gain</strong> <code>**not bold**</code> <img alt="gains chart" src="gains.png?a=1&amp;b=2"></p>',
  );
  assertEquals(markdownToHtml("**![a](b.png)**"), '<p><strong><img alt="a" src="b.png"></strong></p>');
});

Deno.test("markdownToHtml: a table after a paragraph, and a pipe line without a separator is text", () => {
  assertEquals(
    markdownToHtml("Per task:\n| a |\n|---|\n| 1 |\n\nx | y"),
    "<p>Per task:</p>\n<table>\n<thead>\n<tr><th>a</th></tr>\n</thead>\n<tbody>\n<tr><td>1</td></tr>\n</tbody>\n</table>\n" +
      "<p>x | y</p>",
  );
});

Deno.test("italics and escaped asterisks: the report's reference rows and its stars caption", () => {
  const html = markdownToHtml(
    "| *raw pixels (28×28)* |\n|---|\n| x |\n\nstars (\\*\\* p < 0.01, \\*\\*\\* p < 0.001); 2 * 3 * 4",
  );
  assert(html.includes("<th><em>raw pixels (28×28)</em></th>"), html);
  assert(html.includes("stars (** p &lt; 0.01, *** p &lt; 0.001); 2 * 3 * 4"), html);
  assert(!html.includes("<strong>"), html);
});
