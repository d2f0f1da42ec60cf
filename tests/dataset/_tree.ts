/** Builds a file tree in a fresh temp folder from `relative path → content` (text or bytes); returns its root. */
export async function buildTree(files: Record<string, Uint8Array | string>): Promise<string> {
  const root = await Deno.makeTempDir();
  for (const [name, content] of Object.entries(files)) {
    const p = `${root}/${name}`;
    await Deno.mkdir(p.replace(/\/[^/]+$/, ""), { recursive: true });
    if (typeof content === "string") await Deno.writeTextFile(p, content);
    else await Deno.writeFile(p, content);
  }
  return root;
}
