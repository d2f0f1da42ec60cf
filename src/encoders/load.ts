/**
 * Loading weight files into models and reading models back out as state
 * dicts. Loading is a name lookup: the files' names are the models' names.
 * @module
 */
import { countNonFinite, firstNonFinite } from "../util/finite.ts";
import { dirname, join } from "node:path";
import {
  describeUnwrap,
  mapBertWeights,
  type MappedWeights,
  mapVisionWeights,
  readWeightFile,
  readWeights,
  type VisionLayout,
} from "../io/weights.ts";
import { numel, type TensorData, toFloat32 } from "../io/tensor.ts";
import { CheckpointError, EncoderError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";
import { type BertConfig, bertConfigFromJson, type BertModel, createBert } from "./bert.ts";
import { assignValues, initLinearDefault, normalValues, type Params } from "./layers.ts";
import { inferVitConfig, validateVitConfig, vitArchFromName } from "./presets.ts";
import { createVit, gridSize, resizePosEmbed, type VitConfig, type VitFamily, type VitModel } from "./vit.ts";

/** What {@link loadStateDict} found. */
export interface LoadReport {
  /** Model parameters the weights did not provide. */
  missing: string[];
  /** Weights the model has no parameter for. */
  unexpected: string[];
  /** Weights whose shape differs from the parameter's: `name: file [..] vs model [..]`. */
  mismatched: string[];
}

/** Options of {@link loadStateDict}. */
export interface LoadOptions {
  /** Fail on any missing, unexpected or mis-shaped key (default true). `false` must be asked for. */
  strict?: boolean;
  /** Parameters that may be missing even in strict mode (they keep their initial values). */
  allowMissing?: (name: string) => boolean;
  /** File name for messages. */
  fileName?: string;
  /**
   * What the strict-mode error suggests for loading anyway, e.g. "pass --no-strict" in a task with that flag;
   * default none (a task without such a flag must not name one).
   */
  strictHint?: string;
  /**
   * Keys of the file that the mapping set aside as belonging to no part of the model (not a documented extra of a
   * release): reported as unexpected, as PyTorch's `load_state_dict` reports them, so strict mode refuses them.
   */
  unexpected?: string[];
}

/**
 * Copies `tensors` into `params` by name (converting to float32). With
 * `strict` (the default) any missing, unexpected or wrongly shaped key is an
 * {@link EncoderError} that lists them all.
 * @param params the model's parameters by name
 * @param tensors the file's tensors under the model's names
 * @param options strictness, missing keys allowed, file name and hint for messages
 * @returns the missing, unexpected and mis-shaped keys
 * @throws {EncoderError} in strict mode, any missing, unexpected or mis-shaped key
 * @throws {CheckpointError} a loaded tensor holding NaN or ±Inf (naming it and the file)
 */
export function loadStateDict(params: Params, tensors: Map<string, TensorData>, options: LoadOptions = {}): LoadReport {
  const strict = options.strict ?? true;
  const report: LoadReport = { missing: [], unexpected: [...(options.unexpected ?? [])], mismatched: [] };
  for (const [name, t] of tensors) {
    const p = params.get(name);
    if (!p) report.unexpected.push(name);
    else if (p.shape.length !== t.shape.length || p.shape.some((d, i) => d !== t.shape[i])) {
      report.mismatched.push(`${name}: file [${t.shape}] vs model [${p.shape}]`);
    }
  }
  for (const name of params.keys()) {
    if (!tensors.has(name) && !options.allowMissing?.(name)) report.missing.push(name);
  }
  const bad = report.missing.length + report.unexpected.length + report.mismatched.length;
  if (strict && bad > 0) {
    const list = (label: string, xs: string[]) =>
      xs.length ? `\n  ${label} (${xs.length}): ${xs.slice(0, 12).join(", ")}${xs.length > 12 ? ", …" : ""}` : "";
    throw new EncoderError(
      `${options.fileName ?? "weights"} do not match the model:` + list("missing", report.missing) +
        list("unexpected", report.unexpected) +
        list("wrong shape", report.mismatched) +
        (options.strictHint ? `\n  (${options.strictHint} to load the matching keys only)` : ""),
    );
  }
  for (const [name, t] of tensors) {
    const p = params.get(name);
    if (!p || report.mismatched.some((m) => m.startsWith(`${name}:`))) continue;
    // Copy: the optimiser updates parameters in place, and the caller may still hold `tensors`.
    const values = toFloat32(t).slice();
    checkFiniteWeights(values, name, options.fileName);
    assignValues(p, values);
  }
  return report;
}

/**
 * Refuses a weight tensor holding NaN or ±Inf: such a model silently gives
 * NaN features and metrics downstream (PyTorch would load it without a word).
 * One pass over values that were just converted to float32.
 * @param values the tensor's values
 * @param name the tensor's name (the model's)
 * @param fileName the file, for the message
 * @throws {CheckpointError} naming the file, the tensor, how many values are not finite and the first one
 */
export function checkFiniteWeights(values: Float32Array, name: string, fileName = "weights"): void {
  const i = firstNonFinite(values);
  if (i >= 0) {
    throw new CheckpointError(
      `${fileName}: tensor "${name}" holds ${countNonFinite(values, i)} non-finite value(s) of ${values.length} ` +
        `(first: ${values[i]} at index ${i}); ` +
        "a model with NaN or infinite weights gives NaN outputs: use an undamaged file (or one saved before training diverged)",
    );
  }
}

/**
 * Splits a mapping's dropped keys into unexpected ones (marked with `reason`, the mapping's word for a key that is
 * no part of the model and no documented extra; `except` are reported elsewhere) and the documented rest.
 */
function splitUnexpected(
  dropped: string[],
  reason: string,
  except: string[] = [],
): { unexpected: string[]; documented: string[] } {
  const suffix = ` (${reason})`;
  const unexpected: string[] = [];
  const documented: string[] = [];
  for (const d of dropped) {
    if (d.endsWith(suffix) && !except.includes(d)) unexpected.push(d.slice(0, -suffix.length));
    else documented.push(d);
  }
  return { unexpected, documented };
}

/**
 * A model's variables as a state dict of float32 copies, read asynchronously so that every backend works (WebGPU
 * under Deno has no synchronous read).
 * @param params the model's variables
 * @returns float32 copies by parameter name, in parameter order
 */
export async function stateDict(params: Params): Promise<Map<string, TensorData>> {
  const out = new Map<string, TensorData>();
  for (const [name, p] of params) {
    out.set(name, { dtype: "F32", shape: [...p.shape], data: (await p.data()) as Float32Array });
  }
  return out;
}

/**
 * The lines a non-strict load prints, as PyTorch's `load_state_dict` returns
 * them: missing, unexpected and mis-shaped keys, and the file's keys dropped
 * on purpose.
 * @param report What {@link loadStateDict} found.
 * @param dropped Keys of the file dropped before matching, with reasons.
 * @returns One line per non-empty list.
 */
export function formatLoadReport(report: LoadReport, dropped: string[] = []): string[] {
  const list = (label: string, xs: string[]) =>
    xs.length ? [`${label} (${xs.length}): ${xs.slice(0, 20).join(", ")}${xs.length > 20 ? ", …" : ""}`] : [];
  const lines = [
    ...list("missing keys (left at their initial values)", report.missing),
    ...list("unexpected keys (ignored)", report.unexpected),
    ...list("keys with a different shape (ignored)", report.mismatched),
    ...list("dropped from the file", dropped),
  ];
  return lines.length ? lines : ["all keys matched"];
}

/** How the family (token and probing recipe) of a vision checkpoint was decided. */
export interface FamilyDecision {
  /** The family used. */
  family: VitFamily;
  /** What decided it. */
  source: "option" | "metadata" | "stored-config" | "layout" | "file-name" | "default";
  /** Human-readable reason, printed by the tasks. */
  reason: string;
  /** True when nothing in the file says so (file name or default): the message says how to set it. */
  guess: boolean;
}

/** A loaded vision encoder and where it came from. */
export interface LoadedVit {
  /** The model. */
  model: VitModel;
  /** The layout the file was recognised as, and what was dropped. */
  mapped: MappedWeights<VisionLayout>;
  /** Parameters not in the file that were freshly initialised (RETFound's `proj`). */
  newlyInitialised: string[];
  /** How the family was decided. */
  family: FamilyDecision;
  /** Notices printed while loading (family, stripped prefixes, guessed head count, non-strict report…). */
  notices: string[];
  /** Key matching result (empty lists in a strict load). */
  report: LoadReport;
}

/** Options of {@link loadVit}. */
export interface LoadVitOptions {
  /** Family to use, or `auto` (metadata, then release layout, then the authors' path-substring rule). */
  arch?: VitFamily | "auto";
  /** Input size; the position embedding is interpolated bicubically if it differs from the file's. */
  imgSize?: number;
  /** Attention heads (not stored in weights; default: a stored config, else width/64 with a notice). */
  numHeads?: number;
  /** Strict key matching (default true). */
  strict?: boolean;
  /** Generator for freshly initialised parameters (RETFound's `proj`). */
  rng?: Rng;
  /** Overrides applied to the inferred config (e.g. `dropPathRate`). */
  overrides?: Partial<VitConfig>;
  /**
   * Width of a projection the file does not have (RETFound's new refinement `proj`, §1.2): the BERT's hidden size,
   * so that its tokens fit the cross-attention (default: the authors' 768, BERT-base). Ignored when the file has a
   * `proj` or stores its width, and for families without one.
   */
  newProjDim?: number;
  /** Where notices go (default `console.error`, beside progress; `null` keeps them only in the result). */
  log?: ((line: string) => void) | null;
  /** Name of the flag that sets the family, for the "how to set it" part of guesses (default `--arch`). */
  archFlag?: string;
  /** The values that flag takes, named with it (default `retfound|visionfm|urfound|timm`). */
  archChoices?: string;
  /** Hint in the strict-mode error (see {@link LoadOptions.strictHint}). */
  strictHint?: string;
  /**
   * How the caller sets the head count, named when it is guessed (default "pass numHeads"; tasks: "set --heads";
   * "" for none).
   */
  headsHint?: string;
}

/**
 * The family a path names (§1.2: the authors pick the model by substring of
 * the weights path), also the paper's release names RetFiner-R/-U/-V.
 * @param path The weights path.
 * @returns The family, or undefined when the name says nothing.
 */
export function familyFromPath(path: string): VitFamily | undefined {
  const p = path.toLowerCase();
  if (p.includes("retfound")) return "retfound";
  if (p.includes("visionfm") || p.includes("vfm")) return "visionfm";
  if (p.includes("urfound")) return "urfound";
  const base = p.split(/[\\/]/).pop() ?? "";
  const m = /retfiner[-_]([ruv])(?![a-z])/.exec(base);
  if (m) return ({ r: "retfound", u: "urfound", v: "visionfm" } as const)[m[1] as "r" | "u" | "v"];
  return undefined;
}

const FAMILIES: readonly VitFamily[] = ["retfound", "visionfm", "urfound", "timm"];

/** What a checkpoint stores about its own architecture and family. */
interface StoredInfo {
  /** The config this project writes (`retfiner.vit_config`), unchecked. */
  config?: Partial<VitConfig>;
  /** Where `config` came from, for messages. */
  configWhere?: string;
  /** Family from metadata. */
  family?: VitFamily;
  /** Where `family` came from. */
  familyWhere?: string;
  /** Architecture name (`args.model`, `args.arch`, config.json `architecture`). */
  arch?: { name: string; where: string };
  /** Head count stated by a config.json. */
  numHeads?: { value: number; where: string };
}

function parseJsonField(raw: unknown, where: string): Record<string, unknown> {
  if (raw instanceof Map) return Object.fromEntries([...raw].map(([k, v]) => [String(k), v]));
  if (typeof raw !== "string") throw new CheckpointError(`${where} is not a JSON string`);
  if (raw.length > 65536) throw new CheckpointError(`${where} is ${raw.length} characters long (at most 65536)`);
  try {
    const v = JSON.parse(raw);
    if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error("not an object");
    return v;
  } catch (err) {
    throw new CheckpointError(`${where} is not a JSON object (${(err as Error).message})`);
  }
}

function readStoredInfo(path: string, top: Map<string, unknown>, metadata: Record<string, string>): StoredInfo {
  const info: StoredInfo = {};
  const setFamily = (v: unknown, where: string) => {
    if (v === undefined || v === null) return;
    if (!FAMILIES.includes(v as VitFamily)) {
      throw new CheckpointError(`${path}: ${where} = ${JSON.stringify(v)} is not one of ${FAMILIES.join(", ")}`);
    }
    info.family ??= v as VitFamily;
    info.familyWhere ??= where;
  };
  // safetensors metadata written by this package.
  if (metadata["retfiner.vit_config"] !== undefined) {
    info.config = parseJsonField(metadata["retfiner.vit_config"], `${path}: retfiner.vit_config`) as Partial<VitConfig>;
    info.configWhere = "retfiner.vit_config";
    setFamily(info.config.family, "retfiner.vit_config.family");
  }
  setFamily(metadata["retfiner.family"], "retfiner.family metadata");
  // .pth exports of this package: OrderedDict metadata (`_metadata["retfiner"]`), as PyTorch keeps module versions.
  const pthMeta = top.get("_metadata");
  const ours = pthMeta instanceof Map ? pthMeta.get("retfiner") : undefined;
  if (ours instanceof Map) {
    if (ours.get("vit_config") !== undefined && !info.config) {
      info.config = parseJsonField(ours.get("vit_config"), `${path}: _metadata.retfiner.vit_config`) as Partial<
        VitConfig
      >;
      info.configWhere = "_metadata.retfiner.vit_config";
    }
    setFamily(ours.get("family"), "_metadata.retfiner.family");
  }
  // Training scripts' argparse.Namespace (RETFound, MAE, DINO): args.model / args.arch.
  const args = top.get("args");
  if (args && typeof args === "object") {
    for (const key of ["model", "arch"]) {
      const v = args instanceof Map ? args.get(key) : (args as Record<string, unknown>)[key];
      if (typeof v === "string" && !info.arch) info.arch = { name: v, where: `args.${key}` };
    }
  }
  // A config.json beside the weights (timm / Hugging Face hub layout), if it describes a ViT.
  const cfgPath = join(dirname(path), "config.json");
  try {
    const st = Deno.statSync(cfgPath);
    if (st.isFile && st.size < 1 << 20 && cfgPath !== path) {
      const json = JSON.parse(Deno.readTextFileSync(cfgPath));
      const name = json?.architecture ?? json?.arch ?? json?.model_name;
      if (typeof name === "string" && vitArchFromName(name) && !info.arch) {
        info.arch = { name, where: `${cfgPath} "architecture"` };
      }
      const heads = json?.model_args?.num_heads ?? json?.num_heads;
      if (heads !== undefined) {
        if (typeof heads !== "number" || !Number.isInteger(heads) || heads < 1 || heads > 1024) {
          throw new CheckpointError(`${cfgPath}: num_heads = ${JSON.stringify(heads)} is not an integer in [1, 1024]`);
        }
        info.numHeads = { value: heads, where: `${cfgPath} num_heads` };
      }
    }
  } catch (err) {
    if (err instanceof CheckpointError) throw err;
    // no readable config.json beside the file: nothing stated
  }
  return info;
}

function decideFamily(
  path: string,
  layout: VisionLayout,
  stored: StoredInfo,
  options: LoadVitOptions,
): FamilyDecision {
  const flag = options.archFlag ?? "--arch";
  if (options.arch && options.arch !== "auto") {
    return { family: options.arch, source: "option", reason: `set by ${flag}`, guess: false };
  }
  if (stored.family) {
    return {
      family: stored.family,
      source: "metadata",
      reason: `stored in the file (${stored.familyWhere})`,
      guess: false,
    };
  }
  const byLayout: Partial<Record<VisionLayout, [VitFamily, string]>> = {
    retfound: ["retfound", `RETFound MAE release layout ("model" with timm ViT keys)`],
    dinov2: ["retfound", `RETFound DINOv2 release layout (teacher, layer scale)`],
    visionfm: ["visionfm", `VisionFM release layout ("teacher" with DINO/iBOT keys)`],
    urfound: ["urfound", `UrFound release layout ("model" with bert_encoder/bert_mlp)`],
  };
  const l = byLayout[layout];
  if (l) return { family: l[0], source: "layout", reason: l[1], guess: false };
  const how = `if it is wrong, set ${flag} ${options.archChoices ?? "retfound|visionfm|urfound|timm"}`;
  const named = familyFromPath(path);
  if (named) {
    return {
      family: named,
      source: "file-name",
      reason: `a guess from the file name, like the authors' code (no metadata or layout says it); ${how}`,
      guess: true,
    };
  }
  if (layout === "mae-finetuned") {
    return {
      family: "retfound",
      source: "layout",
      reason: `a guess: the layout of RETFound's fine-tuning script (global pool), which UrFound's shares; ${how}`,
      guess: true,
    };
  }
  if (layout === "retfiner-backbone") {
    return {
      family: "retfound",
      source: "layout",
      reason: `a guess: a flat backbone with a proj layer, as RETFound's refined export; ${how}`,
      guess: true,
    };
  }
  return {
    family: "timm",
    source: "default",
    reason: `a guess: nothing in the file or its name says which model this is (${layout} layout), so the plain ` +
      `timm recipe (ImageNet statistics) is used; ${how}`,
    guess: true,
  };
}

/**
 * The family {@link loadVit} would decide for a vision checkpoint, without building the model (tensors are not
 * converted), e.g. to check that two files a task compares are of one family before anything long runs.
 * @param path The weights.
 * @param options `arch` (and `archFlag`/`archChoices` for the reason's wording), as {@link loadVit}'s.
 * @returns The family decision with its reason.
 * @throws {CheckpointError} for files that are no vision checkpoint, as {@link loadVit}.
 */
export function vitFamilyOf(
  path: string,
  options: Pick<LoadVitOptions, "arch" | "archFlag" | "archChoices"> = {},
): FamilyDecision {
  const { top, metadata } = readWeights(path);
  const mapped = mapVisionWeights(top, { fileName: path });
  return decideFamily(path, mapped.layout, readStoredInfo(path, top, metadata), options);
}

/**
 * Loads a vision encoder from a weight file in any supported layout, deciding
 * its family once (option, stored metadata, layout, then the file name) and
 * printing how, with every other notice (prefixes stripped, head count guessed,
 * non-strict report).
 *
 * @example
 * ```ts ignore
 * import { loadVit } from "./load.ts";
 * const { model, mapped, family } = loadVit("RETFound_oct_weights.pth", { arch: "auto" });
 * console.log(mapped.layout, family.reason, model.config.embedDim);
 * ```
 * @param path Weight file, `*.index.json` or model folder.
 * @param options See {@link LoadVitOptions}.
 * @returns The model, how it was recognised, and the notices.
 * @throws {CheckpointError} for unreadable or unrecognised files and bad stored configs.
 * @throws {EncoderError} for a config that fails validation or keys that do not match in strict mode.
 */
export function loadVit(path: string, options: LoadVitOptions = {}): LoadedVit {
  const log = options.log === undefined ? (line: string) => console.error(line) : options.log;
  const notices: string[] = [];
  const notice = (line: string) => {
    notices.push(line);
    log?.(line);
  };
  const { top, metadata } = readWeights(path);
  const mapped = mapVisionWeights(top, { fileName: path });
  const stored = readStoredInfo(path, top, metadata);
  const family = decideFamily(path, mapped.layout, stored, options);
  notice(`${path}: family ${family.family} — ${family.reason}`);
  if (mapped.container?.length || mapped.stripped?.size) {
    notice(
      `${path}: ${mapped.layout} layout; ${
        describeUnwrap({ container: mapped.container ?? [], stripped: mapped.stripped ?? new Map() })
      }`,
    );
  }
  // The head count is not in the weights: option, stored config, stated architecture, else width/64.
  const width = mapped.tensors.get("cls_token")?.shape.at(-1) ?? 0;
  // A stored value of the wrong type is kept, so that validation below refuses it by name.
  let numHeads = options.numHeads ?? (stored.config?.numHeads ?? undefined);
  if (numHeads === undefined && stored.numHeads) numHeads = stored.numHeads.value;
  if (numHeads === undefined && stored.arch) {
    const a = vitArchFromName(stored.arch.name);
    if (a && a.embedDim === width) numHeads = a.numHeads;
    else {
      notice(
        `${path}: ${stored.arch.where} = "${stored.arch.name}" ${
          a
            ? `(width ${a.embedDim}) does not describe these ${width}-wide weights`
            : "is not an architecture name known here"
        }; not used`,
      );
    }
  }
  const headsGuessed = numHeads === undefined;
  const inferred = inferVitConfig(mapped.tensors, family.family, { numHeads, fileName: path });
  if (headsGuessed) {
    notice(
      `${path}: ${inferred.numHeads} attention heads = width ${inferred.embedDim}/64 — a guess (the head count is not ` +
        `stored in the weights; right for ViT-B/16 and ViT-L/16)` +
        (options.headsHint === "" ? "" : `; ${options.headsHint ?? "pass numHeads"} if the model has another`),
    );
  }
  // Settings the weights cannot show (projection width without its weights, drop-path rate, input statistics)
  // come from the config this project stores beside its exports.
  const st = stored.config;
  const fromFile: Partial<VitConfig> = st
    ? {
      dropPathRate: st.dropPathRate ?? inferred.dropPathRate,
      mean: st.mean ?? inferred.mean,
      std: st.std ?? inferred.std,
      projDim: st.projDim !== undefined ? st.projDim : inferred.projDim,
      eps: st.eps ?? inferred.eps,
    }
    : {};
  const config: VitConfig = {
    ...inferred,
    ...fromFile,
    family: family.family,
    ...options.overrides,
    ...(options.imgSize ? { imgSize: options.imgSize } : {}),
  };
  const newProj = options.newProjDim !== undefined && config.projDim !== null && !mapped.tensors.has("proj.weight") &&
    st?.projDim === undefined && options.overrides?.projDim === undefined;
  if (newProj) config.projDim = options.newProjDim!;
  // Checked before anything is allocated: the stored config is untrusted input.
  validateVitConfig(config, `${path}: ${st ? stored.configWhere : "config inferred from the weights"}`);
  if (config.globalPool) {
    notice(
      `${path}: a global-pool fine-tune (fc_norm, no norm): its pooled feature is fc_norm(mean of patch tokens) ` +
        `(encode --tokens pooled); recipes that take tokens after the final norm apply fc_norm to each token`,
    );
  }
  const tensors = new Map(mapped.tensors);
  const fileGrid = inferred.imgSize / inferred.patchSize;
  const grid = gridSize(config);
  if (grid !== fileGrid) {
    const pe = tensors.get("pos_embed")!;
    tensors.set("pos_embed", {
      dtype: "F32",
      shape: [1, 1 + grid * grid, config.embedDim],
      data: resizePosEmbed(toFloat32(pe), config.embedDim, fileGrid, grid),
    });
  }
  // Keys inside the ViT that this ViT has no place for (a q/k norm, register tokens, a pre-norm, relative position
  // bias) change what it computes: dropping them silently would give other features. Strict mode refuses them.
  const foreign = mapped.dropped.filter((d) =>
    /\((not part of the vision backbone|relative position bias \(not supported\))\)$/.test(d) &&
    /(^|\.)(blocks\.\d+\.|patch_embed\.|norm_pre\.|reg_token( |$))/.test(d)
  );
  // Any other key that is no documented extra of a release is unexpected, as PyTorch says (strict mode refuses it).
  const { unexpected, documented } = splitUnexpected(mapped.dropped, "not part of the vision backbone", foreign);
  if ((options.strict ?? true) && foreign.length) {
    throw new EncoderError(
      `${path}: ${foreign.length} key(s) belong to a ViT with parts this one does not have, and would change its ` +
        `features: ${foreign.slice(0, 8).join(", ")}${foreign.length > 8 ? ", …" : ""}` +
        (unexpected.length
          ? `\n  unexpected (${unexpected.length}): ${unexpected.slice(0, 12).join(", ")}${
            unexpected.length > 12 ? ", …" : ""
          }`
          : "") +
        (options.strictHint ? `\n  (${options.strictHint} to load without them)` : ""),
    );
  }
  const model = createVit(config, { init: "zeros" });
  const newlyInitialised: string[] = [];
  const fresh = (name: string) => config.projDim !== null && name.startsWith("proj.") && !tensors.has(name);
  const report = loadStateDict(model.params, tensors, {
    strict: options.strict,
    allowMissing: fresh,
    fileName: path,
    strictHint: options.strictHint,
    unexpected,
  });
  if (options.strict === false) {
    for (const line of formatLoadReport(report, documented)) notice(`${path}: --no-strict: ${line}`);
  }
  if (config.projDim !== null && !tensors.has("proj.weight")) {
    // §1.2: RETFound's projection is new, with nn.Linear's default init.
    const tmp: Params = new Map();
    initLinearDefault(
      tmp,
      `${model.scope}_init`,
      "proj",
      config.embedDim,
      config.projDim,
      options.rng ?? new Rng(0, "proj-init"),
    );
    for (const [name, v] of tmp) {
      model.params.get(name)!.assign(v);
      v.dispose();
      newlyInitialised.push(name);
    }
    if (newProj) {
      notice(
        `${path}: new proj ${config.embedDim}→${config.projDim} (RETFound's refinement projection, not in the file: ` +
          `nn.Linear's default init, sized to the text encoder's width)`,
      );
    }
  }
  return { model, mapped, newlyInitialised, family, notices, report };
}

/** A loaded BERT. */
export interface LoadedBert {
  /** The model. */
  model: BertModel;
  /** What was dropped from the file. */
  mapped: MappedWeights<"hf-bert">;
  /**
   * Parameters absent from the file and initialised as Hugging Face does: the cross-attention blocks of a plain
   * BERT, and the MLM head of a file without one (`BertModel`, `BertForSequenceClassification`).
   */
  newlyInitialised: string[];
  /** Notices printed while loading. */
  notices: string[];
  /** Key matching result. */
  report: LoadReport;
}

/** Options of {@link loadBert}. */
export interface LoadBertOptions {
  /** Strict key matching (default true). */
  strict?: boolean;
  /** Generator for the newly initialised weights. */
  rng?: Rng;
  /** Where notices go (default `console.error`, beside progress; `null` keeps them only in the result). */
  log?: ((line: string) => void) | null;
  /** Hint in the strict-mode error (see {@link LoadOptions.strictHint}). */
  strictHint?: string;
}

/**
 * Loads a Hugging Face BERT (`pytorch_model.bin` / `model.safetensors`, a
 * sharded `*.index.json` or the model folder, + `config.json`) with
 * cross-attention in every layer. Cross-attention blocks absent from the file
 * (plain bert-base-uncased) are initialised as HF does: weights N(0, 0.02),
 * biases 0, LayerNorm 1/0 (§1.4). A file without the MLM head gets one the
 * same way (the decoder is tied to the word embeddings, its bias 0), with a
 * notice.
 * @param weightsPath Weight file, index or folder.
 * @param config A config, or the path of a `config.json`.
 * @param options See {@link LoadBertOptions}.
 * @returns The model, what was dropped and what was initialised.
 * @throws {EncoderError} for a bad config or keys that do not match in strict mode.
 * @throws {CheckpointError} for unreadable files.
 */
export function loadBert(
  weightsPath: string,
  config: BertConfig | string,
  options: LoadBertOptions = {},
): LoadedBert {
  const log = options.log === undefined ? (line: string) => console.error(line) : options.log;
  const notices: string[] = [];
  const notice = (line: string) => {
    notices.push(line);
    log?.(line);
  };
  let cfg: BertConfig;
  if (typeof config === "string") {
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(Deno.readTextFileSync(config));
    } catch (err) {
      throw new EncoderError(`${config}: cannot read BERT config (${(err as Error).message})`);
    }
    if (!json || typeof json !== "object" || Array.isArray(json)) {
      throw new EncoderError(
        `${config}: a BERT config must be a JSON object, found ${JSON.stringify(json)?.slice(0, 40)}`,
      );
    }
    cfg = bertConfigFromJson(json, config);
  } else cfg = config;
  const mapped = mapBertWeights(readWeightFile(weightsPath), { fileName: weightsPath });
  if (mapped.container?.length || mapped.stripped?.size) {
    notice(
      `${weightsPath}: ${
        describeUnwrap({ container: mapped.container ?? [], stripped: mapped.stripped ?? new Map() })
      }`,
    );
  }
  const tensors = new Map(mapped.tensors);
  // The MLM decoder is tied to the word embeddings; its bias is cls.predictions.bias.
  for (const tied of ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]) {
    if (tensors.delete(tied)) mapped.dropped.push(`${tied} (tied)`);
  }
  const isHead = (name: string) => name.startsWith("cls.predictions.");
  const headMissing = ![...tensors.keys()].some(isHead);
  const model = createBert(cfg, { init: "zeros" });
  const isCross = (name: string) => name.includes(".crossattention.");
  // Keys that are no part of BertForMaskedLM and no documented extra (pooler, NSP or classification head,
  // buffers, a Lightning checkpoint's other parts) are unexpected, as PyTorch says: strict mode refuses them.
  const { unexpected, documented } = splitUnexpected(mapped.dropped, "not part of BertForMaskedLM");
  const report = loadStateDict(model.params, tensors, {
    strict: options.strict,
    allowMissing: (n) => isCross(n) || (headMissing && isHead(n)),
    fileName: weightsPath,
    strictHint: options.strictHint,
    unexpected,
  });
  if (options.strict === false) {
    for (const line of formatLoadReport(report, documented)) notice(`${weightsPath}: --no-strict: ${line}`);
  }
  const newlyInitialised = [...model.params.keys()].filter((n) =>
    (isCross(n) || (headMissing && isHead(n))) && !tensors.has(n)
  );
  const rng = options.rng ?? new Rng(0, "bert-crossattn-init");
  for (const name of newlyInitialised) {
    const p = model.params.get(name)!;
    const values = name.endsWith("LayerNorm.weight")
      ? new Float32Array(p.size).fill(1)
      : name.endsWith(".weight")
      ? normalValues(rng, p.size, cfg.initializerRange)
      : new Float32Array(p.size);
    assignValues(p, values);
  }
  if (headMissing) {
    notice(
      `${weightsPath}: no MLM head in the file (a BertModel or classification checkpoint): cls.predictions.* ` +
        `initialised as Hugging Face does (transform dense N(0, ${cfg.initializerRange}), LayerNorm 1/0, bias 0; ` +
        `decoder tied to the word embeddings)`,
    );
  }
  return { model, mapped, newlyInitialised, notices, report };
}

/**
 * A BERT's state dict as Hugging Face's `BertForMaskedLM` saves it.
 * @param model the BERT
 * @returns its state dict with `cls.predictions.decoder.weight` (tied to the word embeddings) and `.bias` added
 */
export async function bertStateDictForExport(model: BertModel): Promise<Map<string, TensorData>> {
  return withTiedDecoder(await stateDict(model.params));
}

function withTiedDecoder(sd: Map<string, TensorData>): Map<string, TensorData> {
  sd.set("cls.predictions.decoder.weight", sd.get("bert.embeddings.word_embeddings.weight")!);
  sd.set("cls.predictions.decoder.bias", sd.get("cls.predictions.bias")!);
  return sd;
}

/**
 * Number of parameters a state dict holds.
 * @param tensors the state dict
 * @returns the total number of elements
 */
export function stateDictSize(tensors: Map<string, TensorData>): number {
  let n = 0;
  for (const t of tensors.values()) n += numel(t.shape);
  return n;
}
