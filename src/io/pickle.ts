/**
 * A safe Python unpickler. It implements the pickle virtual machine itself and
 * never runs anything a pickle asks for: every global (class or function) a
 * pickle names must be in the caller's allow-list, which maps it to a plain
 * JavaScript function. Any other global is refused at the opcode that names
 * it, before anything could be called, like `torch.load(weights_only=True)`.
 * @module
 */
import { CheckpointError } from "../util/errors.ts";

/** A Python object built by an allow-listed class: `__class__` plus its attributes. */
export interface PyObject {
  /** `module.qualname` of the class. */
  __class__: string;
  /** The object's attributes, as set by BUILD. */
  [attr: string]: unknown;
}

/** How an allow-listed global behaves when a pickle calls it. */
export interface PyGlobal {
  /** Called by REDUCE / NEWOBJ / OBJ with the positional arguments. */
  call(args: unknown[], kwargs?: Map<unknown, unknown>): unknown;
  /** Applies BUILD's state to an object this global made (default: copy dict items onto it). */
  build?(obj: unknown, state: unknown): unknown;
}

/** Resource limits of {@link unpickle}; see {@link DEFAULT_PICKLE_LIMITS}. */
export interface PickleLimits {
  /**
   * Work units: every opcode costs 1, and every opcode or allowed global that
   * walks a container or copies text costs its length more.
   */
  maxWork: number;
  /** Bytes of strings, bytes objects and container slots the pickle may create. */
  maxBytes: number;
  /** Nodes of the result counted as a tree (shared parts counted every time they are reached). */
  maxTreeNodes: number;
  /** Nesting depth of the result. */
  maxDepth: number;
  /** Elements of a dict key (tuples of tuples …) counted as a tree. */
  maxKeyElements: number;
}

/**
 * The defaults: far above what any state dict or training checkpoint needs
 * (a ViT-L checkpoint's pickle does ~10^5 units of work) and far below what
 * would strain memory.
 */
export const DEFAULT_PICKLE_LIMITS: Readonly<PickleLimits> = Object.freeze({
  maxWork: 200_000_000,
  maxBytes: 192 * 2 ** 20,
  maxTreeNodes: 20_000_000,
  maxDepth: 256,
  maxKeyElements: 4096,
});

/** Options of {@link unpickle}. */
export interface UnpickleOptions {
  /** Allowed globals by `module.name`. */
  globals: Map<string, PyGlobal>;
  /** Resolves a persistent id (PyTorch uses them for tensor storages). */
  persistentLoad?: (pid: unknown) => unknown;
  /** File name for error messages. */
  fileName?: string;
  /** Where the pickle starts in `bytes` (default 0). */
  offset?: number;
  /** Resource limits (default {@link DEFAULT_PICKLE_LIMITS}). */
  limits?: Partial<PickleLimits>;
  /** Values the result may contain that are leaves (not walked by the result check), e.g. tensors. */
  isLeaf?: (v: object) => boolean;
}

/** Thrown when a pickle names a global that is not allowed. */
export class UnsafePickleError extends CheckpointError {}

/** Thrown when a pickle ends before its STOP opcode (the bytes given are a prefix of it). */
export class PickleTruncatedError extends CheckpointError {}

/** Thrown when a pickle exceeds one of its {@link PickleLimits}. */
export class PickleLimitError extends CheckpointError {}

/**
 * Python's repr-like text of a dict key, refusing keys larger than `limit`
 * elements when expanded (a tuple DAG can stand for 2^40 elements in 600 bytes).
 */
function keyText(k: unknown[], limit: number, fail: (msg: string) => never): string {
  const sizes = new Map<unknown[], number>();
  const size = (a: unknown[], depth: number): number => {
    let n = sizes.get(a);
    if (n !== undefined) return n;
    if (depth > limit) return Infinity;
    sizes.set(a, Infinity); // a cycle counts as too large
    n = 1;
    for (const x of a) {
      n += Array.isArray(x) ? size(x, depth + 1) : 1;
      if (n > limit) break;
    }
    sizes.set(a, n);
    return n;
  };
  if (size(k, 0) > limit) {
    fail(`a dict key is a tuple of more than ${limit} elements when expanded; a weights file never needs one`);
  }
  // The text is bounded too: 4096 references to one long string would otherwise be gigabytes.
  const maxChars = 64 * limit;
  let chars = 0;
  const leaf = (x: unknown): string => {
    if (x !== null && typeof x === "object" && !(x instanceof Uint8Array)) {
      fail("a dict key is a tuple holding a dict, set or object; a weights file never needs one");
    }
    if ((typeof x === "string" || x instanceof Uint8Array) && x.length > maxChars) {
      fail(`a dict key's text is longer than ${maxChars} characters; a weights file never needs one`);
    }
    const t = typeof x === "string"
      ? JSON.stringify(x)
      : x instanceof Uint8Array
      ? `b${JSON.stringify(new TextDecoder("latin1").decode(x))}`
      : x === null
      ? "None"
      : typeof x === "boolean"
      ? (x ? "True" : "False")
      : String(x);
    chars += t.length;
    if (chars > maxChars) {
      fail(`a dict key's text is longer than ${maxChars} characters; a weights file never needs one`);
    }
    return t;
  };
  const text = (x: unknown): string =>
    Array.isArray(x) ? `(${x.map(text).join(", ")}${x.length === 1 ? "," : ""})` : leaf(x);
  return text(k);
}

/**
 * Bytes charged per opcode against `maxBytes`: about what V8 spends on the
 * object the opcode creates (an empty Map ~200 bytes, an array ~56), 16 for
 * the rest.
 */
const OP_BYTES: Uint16Array = (() => {
  const t = new Uint16Array(256).fill(16);
  for (const op of [0x7d, 0x64, 0x8f, 0x91]) t[op] = 200; // EMPTY_DICT DICT EMPTY_SET FROZENSET
  for (const op of [0x5d, 0x29, 0x74, 0x85, 0x86, 0x87, 0x6c, 0x28]) t[op] = 56; // lists, tuples, MARK
  return t;
})();

/** Globals that are nn.Module classes or that a pickled whole model names. */
function wholeModelHint(bytes: Uint8Array, module: string, name: string): boolean {
  if (!/^[A-Z]/.test(name)) return false;
  if (module.startsWith("torch.nn.modules") || module.startsWith("timm.models")) return true;
  // Every pickled nn.Module's __dict__ has these attribute names.
  const has = (text: string) => {
    const pat = new TextEncoder().encode(text);
    for (let i = bytes.indexOf(pat[0]); i >= 0 && i + pat.length <= bytes.length; i = bytes.indexOf(pat[0], i + 1)) {
      let ok = true;
      for (let j = 1; j < pat.length && ok; j++) ok = bytes[i + j] === pat[j];
      if (ok) return true;
    }
    return false;
  };
  return has("_modules") && has("_parameters");
}

/**
 * An attribute-bag object for allow-listed plain classes such as `argparse.Namespace`.
 * @param qualname the allow-listed class, `module.Name` (e.g. `argparse.Namespace`)
 * @returns a pickle global whose instances are plain attribute bags
 * @throws {CheckpointError} (when an instance is built) for an attribute name that is not a string
 */
export function plainClass(qualname: string): PyGlobal {
  return {
    call: () => ({ __class__: qualname }) as PyObject,
    build(obj, state) {
      const target = obj as Record<string, unknown>;
      // BUILD's state is a dict, or a (dict, slot-dict) pair.
      for (const part of Array.isArray(state) ? state : [state]) {
        if (!(part instanceof Map)) continue;
        for (const [k, v] of part) {
          if (typeof k !== "string") throw new CheckpointError(`${qualname} attribute name is not a string`);
          const name = k;
          if (name === "__class__") continue; // the class is the global's, not the file's to restate
          // defineProperty: a "__proto__" attribute stays an attribute and cannot change the prototype.
          Object.defineProperty(target, name, { value: v, enumerable: true, writable: true, configurable: true });
        }
      }
      return obj;
    },
  };
}

/**
 * Runs the pickle in `bytes` and returns the value it builds plus the offset
 * just past its STOP opcode.
 * @param bytes the pickle stream (protocols 0–5)
 * @param options the allowed globals, persistent-id loader and work limits, see {@link UnpickleOptions}
 * @returns the value built and the offset just past STOP
 * @throws {UnsafePickleError} for a global outside the allow-list or an opcode that would run code
 * @throws {PickleLimitError} when the stream exceeds a time, memory or nesting limit
 * @throws {PickleTruncatedError} when the stream ends before STOP
 * @throws {CheckpointError} for any other malformed stream
 */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions): { value: unknown; end: number } {
  const file = options.fileName ?? "<pickle>";
  const limits: PickleLimits = { ...DEFAULT_PICKLE_LIMITS, ...options.limits };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dec = new TextDecoder("utf-8", { fatal: true });
  const latin1 = new TextDecoder("latin1");
  let pos = options.offset ?? 0;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();
  // Tuples and lists are both arrays here; Python's tuples have no append, so
  // APPEND(S) on one is refused as Python refuses it (AttributeError).
  const tuples = new WeakSet<unknown[]>();
  const tuple = (items: unknown[]) => {
    tuples.add(items);
    return items;
  };
  const objectGlobals = new WeakMap<object, PyGlobal>();
  let work = 0;
  let allocated = 0;

  const fail = (msg: string): never => {
    throw new CheckpointError(`${file}: ${msg} (pickle byte ${pos})`);
  };
  const limitHit = (what: string, limit: number): never => {
    throw new PickleLimitError(
      `${file}: refused to load: the pickle exceeds its budget of ${limit} ${what} (pickle byte ${pos}); ` +
        `a weights file needs far less, so this file is malformed or hostile. Nothing from the file was executed.`,
    );
  };
  /** Charges `n` units of work (walking or copying `n` items). */
  const charge = (n: number) => {
    work += n;
    if (work > limits.maxWork) limitHit("work units", limits.maxWork);
  };
  /** Charges `n` bytes of created objects. */
  const alloc = (n: number) => {
    allocated += n;
    if (allocated > limits.maxBytes) limitHit("bytes of objects", limits.maxBytes);
  };
  const need = (n: number) => {
    if (n < 0 || pos + n > bytes.length) {
      throw new PickleTruncatedError(`${file}: pickle is truncated: needs ${n} more bytes (pickle byte ${pos})`);
    }
  };
  const u8 = () => {
    need(1);
    return bytes[pos++];
  };
  const u16 = () => {
    need(2);
    const v = view.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = () => {
    need(4);
    const v = view.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const i32 = () => {
    need(4);
    const v = view.getInt32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = () => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(bytes.length)) need(Number.MAX_SAFE_INTEGER);
    return Number(v);
  };
  const take = (n: number) => {
    need(n);
    charge(n);
    alloc(2 * n + 32);
    const out = bytes.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  const line = () => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) throw new PickleTruncatedError(`${file}: pickle is truncated: unterminated text line`);
    charge(end - pos);
    alloc(end - pos);
    const s = latin1.decode(bytes.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const utf8 = (b: Uint8Array) => {
    try {
      return dec.decode(b);
    } catch {
      return fail("string is not valid UTF-8");
    }
  };
  const pop = () => {
    if (stack.length === 0) fail("pickle stack underflow");
    return stack.pop();
  };
  const top = () => {
    if (stack.length === 0) fail("pickle stack underflow");
    return stack[stack.length - 1];
  };
  const popMark = () => {
    const items = stack;
    const prev = metastack.pop();
    if (!prev) fail("pickle MARK missing");
    stack = prev!;
    return items;
  };
  const signedLE = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    if (b.length > 256) fail(`integer of ${b.length} bytes; a weights file has no integers that large`);
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const findGlobal = (module: string, name: string): PyGlobal => {
    const key = `${module}.${name}`;
    const g = options.globals.get(key);
    if (!g) {
      if (wholeModelHint(bytes, module, name)) {
        throw new UnsafePickleError(
          `${file}: refused to load: this file is a whole pickled model (class ${key}), not a state dict; loading ` +
            `it would run that class's code. Nothing from the file was executed. In PyTorch, where the class is ` +
            `importable, save only its weights: torch.save(model.state_dict(), path)`,
        );
      }
      throw new UnsafePickleError(
        `${file}: refused to load: the pickle names the global "${key}", which is not on the allow-list of ` +
          `globals a weights file needs. Nothing from the file was executed. ` +
          `(Allowed: ${[...options.globals.keys()].sort().join(", ")})`,
      );
    }
    return g;
  };
  /** Runs an allowed global's code; its errors become CheckpointErrors naming the file and pickle byte. */
  const guarded = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      if (err instanceof CheckpointError && err.message.startsWith(file)) throw err;
      return fail((err as Error)?.message ?? String(err));
    }
  };
  /** Length of a value as a global's arguments see it (what walking it once costs). */
  const shallow = (v: unknown): number =>
    Array.isArray(v) || typeof v === "string" || v instanceof Uint8Array
      ? v.length
      : v instanceof Map || v instanceof Set
      ? v.size
      : 1;
  const callGlobal = (callable: unknown, args: unknown, kwargs?: Map<unknown, unknown>) => {
    const g = callable as PyGlobal;
    if (!g || typeof g.call !== "function") fail("REDUCE target is not an allowed global");
    if (!Array.isArray(args)) fail("REDUCE arguments are not a tuple");
    // A global may walk its arguments (and pairs inside them) once: charge for that.
    let cost = 1;
    for (const a of args as unknown[]) cost += shallow(a);
    if (kwargs) cost += kwargs.size;
    charge(cost);
    alloc(8 * cost);
    const result = guarded(() => g.call(args as unknown[], kwargs));
    if (result !== null && typeof result === "object") objectGlobals.set(result, g);
    return result;
  };
  const kind = (v: unknown): string =>
    Array.isArray(v)
      ? (tuples.has(v) ? "a tuple" : "a list")
      : v instanceof Map
      ? "a dict"
      : v instanceof Set
      ? "a set"
      : v === null
      ? "None"
      : v instanceof Uint8Array
      ? "bytes"
      : typeof v === "object"
      ? "an object"
      : `a ${typeof v}`;
  const setItems = (dict: unknown, items: unknown[]) => {
    if (!(dict instanceof Map)) fail(`SETITEM(S) target is ${kind(dict)}, not a dict`);
    if (items.length % 2) fail("SETITEMS has an odd number of items");
    alloc(16 * items.length);
    for (let i = 0; i < items.length; i += 2) (dict as Map<unknown, unknown>).set(items[i], items[i + 1]);
  };
  const toKey = (k: unknown) => {
    if (k instanceof Map || k instanceof Set) fail("a dict key is a dict or set (unhashable in Python)");
    if (!Array.isArray(k)) return k;
    const text = keyText(k, limits.maxKeyElements, fail);
    charge(text.length);
    alloc(2 * text.length);
    return text;
  };

  for (;;) {
    const opPos = pos;
    const op = u8();
    charge(1);
    alloc(OP_BYTES[op]);
    switch (op) {
      case 0x80: // PROTO
        u8();
        break;
      case 0x95: // FRAME
        u64();
        break;
      case 0x2e: { // STOP
        const value = pop();
        checkResult(value, file, limits, options.isLeaf, charge);
        return { value, end: pos };
      }
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop();
        else popMark();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(signedLE(take(u8())));
        break;
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0) fail("negative LONG4 length");
        stack.push(signedLE(take(n)));
        break;
      }
      case 0x49: { // INT (text)
        const s = line().trim();
        if (s === "00") stack.push(false);
        else if (s === "01") stack.push(true);
        else {
          const v = Number(s);
          if (!Number.isInteger(v)) fail(`bad INT "${s}"`);
          stack.push(v);
        }
        break;
      }
      case 0x4c: { // LONG (text)
        const s = line().trim().replace(/L$/, "");
        if (!/^-?\d{1,600}$/.test(s)) fail(`bad or oversized LONG "${s.slice(0, 40)}"`);
        const v = BigInt(s);
        stack.push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x46: { // FLOAT (text)
        const v = Number(line());
        if (Number.isNaN(v)) fail("bad FLOAT");
        stack.push(v);
        break;
      }
      case 0x58: // BINUNICODE
        stack.push(utf8(take(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8(take(u8())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8(take(u64())));
        break;
      case 0x56: // UNICODE (raw-unicode-escape text)
        stack.push(line().replace(/\\u([0-9a-fA-F]{4})/g, (_, h) => String.fromCharCode(parseInt(h, 16))));
        break;
      case 0x54: { // BINSTRING
        const n = i32();
        if (n < 0) fail("negative BINSTRING length");
        stack.push(latin1.decode(take(n)));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1.decode(take(u8())));
        break;
      case 0x53: { // STRING (quoted text)
        const s = line();
        const m = /^(['"])(.*)\1$/.exec(s.trim());
        if (!m) fail("bad STRING");
        stack.push(m![2]);
        break;
      }
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(take(u64()).slice());
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(tuple([]));
        break;
      case 0x74: { // TUPLE
        const items = popMark(); // pop first: `stack` is rebound by popMark
        stack.push(tuple(items));
        break;
      }
      case 0x85: // TUPLE1
        stack.push(tuple([pop()]));
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b, c]));
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: { // LIST
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        const list = top();
        if (!Array.isArray(list) || tuples.has(list)) fail(`APPEND target is ${kind(list)}, not a list`);
        (list as unknown[]).push(v);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        const list = top();
        if (!Array.isArray(list) || tuples.has(list)) fail(`APPENDS target is ${kind(list)}, not a list`);
        for (const it of items) (list as unknown[]).push(it);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x64: { // DICT
        const items = popMark();
        const d = new Map();
        setItems(d, items.map((x, i) => (i % 2 === 0 ? toKey(x) : x)));
        stack.push(d);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [toKey(k), v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items.map((x, i) => (i % 2 === 0 ? toKey(x) : x)));
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x90: { // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof Set)) fail("ADDITEMS target is not a set");
        for (const it of items) (s as Set<unknown>).add(it);
        break;
      }
      case 0x91: { // FROZENSET
        const items = popMark();
        stack.push(new Set(items));
        break;
      }
      case 0x70: // PUT
        memo.set(Number(line()), top());
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x67: // GET
      case 0x68: // BINGET
      case 0x6a: { // LONG_BINGET
        const idx = op === 0x67 ? Number(line()) : op === 0x68 ? u8() : u32();
        if (!memo.has(idx)) fail(`memo key ${idx} is not defined`);
        stack.push(memo.get(idx));
        break;
      }
      case 0x63: { // GLOBAL
        const module = line();
        const name = line();
        stack.push(findGlobal(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") fail("STACK_GLOBAL needs two strings");
        stack.push(findGlobal(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const callable = pop();
        stack.push(callGlobal(callable, args));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop();
        const cls = pop();
        stack.push(callGlobal(cls, args));
        break;
      }
      case 0x92: { // NEWOBJ_EX
        const kwargs = pop();
        const args = pop();
        const cls = pop();
        stack.push(callGlobal(cls, args, kwargs instanceof Map ? kwargs : undefined));
        break;
      }
      case 0x6f: { // OBJ
        const items = popMark();
        if (items.length === 0) fail("OBJ without a class");
        stack.push(callGlobal(items[0], items.slice(1)));
        break;
      }
      case 0x62: { // BUILD
        // Like PyTorch's weights-only unpickler: BUILD only on objects whose type takes state (here: objects made
        // by an allowed global that defines `build`, and dicts, whose BUILD state is attributes such as
        // `_metadata`). Anything else (a list, a tensor, a plain value) is refused.
        const state = pop();
        const obj = top();
        const g = obj !== null && typeof obj === "object" ? objectGlobals.get(obj) : undefined;
        charge(shallow(state));
        if (g?.build) {
          stack[stack.length - 1] = guarded(() => g.build!(obj, state));
        } else if (obj instanceof Map && (state === null || state instanceof Map)) {
          // OrderedDict attributes (a state dict's `_metadata`): PyTorch keeps them as attributes; this reader
          // puts them among the items under their names (the weight mappers drop `_metadata` by name).
          if (state) { for (const [k, v] of state) obj.set(k, v); }
        } else {
          const kind = Array.isArray(obj)
            ? "a list or tuple"
            : obj instanceof Map
            ? "a dict with non-dict state"
            : obj === null || typeof obj !== "object"
            ? `a ${obj === null ? "None" : typeof obj} value`
            : g
            ? "an object whose type takes no state"
            : "an object that does not accept state";
          fail(`BUILD (setting an object's state) on ${kind} is not allowed in a weights file`);
        }
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (!options.persistentLoad) fail("pickle uses persistent ids but no loader was given");
        stack.push(options.persistentLoad!(pid));
        break;
      }
      case 0x50: { // PERSID
        const pid = line();
        if (!options.persistentLoad) fail("pickle uses persistent ids but no loader was given");
        stack.push(options.persistentLoad!(pid));
        break;
      }
      case 0x69: // INST
      case 0x82: // EXT1
      case 0x83: // EXT2
      case 0x84: // EXT4
      case 0x97: // NEXT_BUFFER
      case 0x98: // READONLY_BUFFER
        pos = opPos;
        throw new UnsafePickleError(
          `${file}: refused to load: pickle opcode 0x${
            op.toString(16)
          } is not allowed in a weights file (pickle byte ${opPos}); nothing was executed`,
        );
      default:
        pos = opPos;
        fail(`unknown pickle opcode 0x${op.toString(16)}; the file is corrupt or not a pickle`);
    }
  }
}

function children(v: unknown, isLeaf?: (v: object) => boolean): unknown[] | undefined {
  if (v === null || typeof v !== "object" || ArrayBuffer.isView(v)) return undefined;
  if (Array.isArray(v)) return v;
  if (v instanceof Map) {
    const out: unknown[] = [];
    for (const [k, x] of v) out.push(k, x);
    return out;
  }
  if (v instanceof Set) return [...v];
  if (isLeaf?.(v)) return undefined;
  if (typeof (v as PyObject).__class__ === "string") return Object.values(v);
  return undefined;
}

/**
 * Checks the unpickled result in time linear in its distinct objects: no
 * container contains itself, nesting is at most `maxDepth`, and the result
 * counted as a tree (every shared part counted each time it is reached, as any
 * naive walk of it would) has at most `maxTreeNodes` nodes.
 */
function checkResult(
  root: unknown,
  file: string,
  limits: PickleLimits,
  isLeaf: ((v: object) => boolean) | undefined,
  charge: (n: number) => void,
): void {
  const done = new Map<object, number>(); // tree size of each finished container
  const onPath = new Set<object>();
  const rootKids = children(root, isLeaf);
  if (!rootKids) return;
  type Frame = { node: object; kids: unknown[]; i: number; size: number };
  const frames: Frame[] = [{ node: root as object, kids: rootKids, i: 0, size: 1 }];
  onPath.add(root as object);
  const refuse = (msg: string): never => {
    throw new PickleLimitError(`${file}: refused to load: ${msg}; a weights file never needs this`);
  };
  while (frames.length) {
    const f = frames[frames.length - 1];
    if (f.i < f.kids.length) {
      const kid = f.kids[f.i++];
      charge(1);
      const known = kid !== null && typeof kid === "object" ? done.get(kid) : undefined;
      if (known !== undefined) {
        f.size += known;
      } else {
        const grand = children(kid, isLeaf);
        if (!grand) f.size += 1;
        else {
          if (onPath.has(kid as object)) refuse("the pickle builds a container that contains itself");
          if (frames.length >= limits.maxDepth) refuse(`the pickle nests containers more than ${limits.maxDepth} deep`);
          onPath.add(kid as object);
          frames.push({ node: kid as object, kids: grand, i: 0, size: 1 });
        }
      }
      if (f.size > limits.maxTreeNodes) {
        refuse(
          `the pickle's result has more than ${limits.maxTreeNodes} objects when its shared parts are counted ` +
            `each time they are reached`,
        );
      }
    } else {
      frames.pop();
      onPath.delete(f.node);
      done.set(f.node, f.size);
      if (frames.length) {
        const parent = frames[frames.length - 1];
        parent.size += f.size;
        if (parent.size > limits.maxTreeNodes) {
          refuse(
            `the pickle's result has more than ${limits.maxTreeNodes} objects when its shared parts are counted ` +
              `each time they are reached`,
          );
        }
      }
    }
  }
}
