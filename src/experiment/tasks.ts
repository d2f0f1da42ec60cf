/**
 * Task discovery, once for every caller: the probing datasets named one by one (`--tasks`) plus every `tasks/*`
 * folder of a benchmark root (`--benchmark`).
 * @module
 */
import { basename, join } from "node:path";
import { listTaskFolders, type ProbeDataset, readImageFolderDataset } from "../dataset/folders.ts";

/**
 * The probing datasets of a command line: the `tasks` given (folders or label CSVs) and every folder under
 * `<benchmark>/tasks/`, sorted by path.
 *
 * @param options `tasks`: paths given one by one; `benchmark`: a benchmark root whose `tasks/*` folders are added.
 * @returns The paths, sorted; empty when neither was given.
 * @throws {DatasetError} When `<benchmark>/tasks` cannot be listed.
 *
 * @example
 * ```ts ignore
 * import { findTaskDirs } from "./tasks.ts";
 * const dirs = await findTaskDirs({ tasks: ["data/OCTID"] });
 * console.log(dirs); // ["data/OCTID"]
 * ```
 */
export async function findTaskDirs(options: { tasks?: string[]; benchmark?: string }): Promise<string[]> {
  const dirs = [...(options.tasks ?? [])];
  if (options.benchmark) dirs.push(...await listTaskFolders(join(options.benchmark, "tasks")));
  return dirs.sort();
}

/**
 * Loads the probing tasks of a benchmark root (`tasks/*`), sorted.
 *
 * @param root Benchmark root holding `tasks/<task>/{train,val,test}/<class>/`.
 * @param only Task folder names to keep (default: all).
 * @returns The datasets, in folder order.
 * @throws {DatasetError} When a task folder is not a probing dataset.
 */
export async function loadTasks(root: string, only?: string[]): Promise<ProbeDataset[]> {
  const dirs = (await listTaskFolders(join(root, "tasks"))).filter((d) => !only || only.includes(basename(d)));
  // allSettled: a bad task is reported (the first in folder order) only after the other tasks' image checks ended.
  const settled = await Promise.allSettled(dirs.map((d) => readImageFolderDataset(d)));
  const failed = settled.find((r) => r.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return settled.map((r) => (r as PromiseFulfilledResult<ProbeDataset>).value);
}
