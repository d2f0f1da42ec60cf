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
}

/** Thrown when a pickle names a global that is not allowed. */
export class UnsafePickleError extends CheckpointError {}

/** An attribute-bag object for allow-listed plain classes such as `argparse.Namespace`. */
export function plainClass(qualname: string): PyGlobal {
  return {
    call: () => ({ __class__: qualname }) as PyObject,
    build(obj, state) {
      const target = obj as Record<string, unknown>;
      // BUILD's state is a dict, or a (dict, slot-dict) pair.
      for (const part of Array.isArray(state) ? state : [state]) {
        if (part instanceof Map) { for (const [k, v] of part) target[String(k)] = v; }
      }
      return obj;
    },
  };
}

/**
 * Runs the pickle in `bytes` and returns the value it builds plus the offset
 * just past its STOP opcode.
 */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions): { value: unknown; end: number } {
  const file = options.fileName ?? "<pickle>";
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dec = new TextDecoder("utf-8", { fatal: true });
  const latin1 = new TextDecoder("latin1");
  let pos = options.offset ?? 0;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();
  const objectGlobals = new WeakMap<object, PyGlobal>();

  const fail = (msg: string): never => {
    throw new CheckpointError(`${file}: ${msg} (pickle byte ${pos})`);
  };
  const need = (n: number) => {
    if (n < 0 || pos + n > bytes.length) fail(`pickle is truncated: needs ${n} more bytes`);
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
    if (v > BigInt(bytes.length)) fail(`length ${v} exceeds the pickle size`);
    return Number(v);
  };
  const take = (n: number) => {
    need(n);
    const out = bytes.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  const line = () => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail("pickle is truncated: unterminated text line");
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
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const findGlobal = (module: string, name: string): PyGlobal => {
    const key = `${module}.${name}`;
    const g = options.globals.get(key);
    if (!g) {
      throw new UnsafePickleError(
        `${file}: refused to load: the pickle names the global "${key}", which is not on the allow-list of ` +
          `globals a weights file needs. Nothing from the file was executed. ` +
          `(Allowed: ${[...options.globals.keys()].sort().join(", ")})`,
      );
    }
    return g;
  };
  const callGlobal = (callable: unknown, args: unknown, kwargs?: Map<unknown, unknown>) => {
    const g = callable as PyGlobal;
    if (!g || typeof g.call !== "function") fail("REDUCE target is not an allowed global");
    if (!Array.isArray(args)) fail("REDUCE arguments are not a tuple");
    const result = g.call(args as unknown[], kwargs);
    if (result !== null && typeof result === "object") objectGlobals.set(result, g);
    return result;
  };
  const setItems = (dict: unknown, items: unknown[]) => {
    if (!(dict instanceof Map)) fail("SETITEM(S) target is not a dict");
    if (items.length % 2) fail("SETITEMS has an odd number of items");
    for (let i = 0; i < items.length; i += 2) (dict as Map<unknown, unknown>).set(items[i], items[i + 1]);
  };
  const toKey = (k: unknown) => (Array.isArray(k) ? JSON.stringify(k) : k);

  for (;;) {
    const opPos = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        u8();
        break;
      case 0x95: // FRAME
        u64();
        break;
      case 0x2e: // STOP
        return { value: pop(), end: pos };
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
        if (!/^-?\d+$/.test(s)) fail(`bad LONG "${s}"`);
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
        stack.push([]);
        break;
      case 0x74: { // TUPLE
        const items = popMark(); // pop first: `stack` is rebound by popMark
        stack.push(items);
        break;
      }
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        const a = pop();
        stack.push([a, b]);
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push([a, b, c]);
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
        if (!Array.isArray(list)) fail("APPEND target is not a list");
        (list as unknown[]).push(v);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        const list = top();
        if (!Array.isArray(list)) fail("APPENDS target is not a list");
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
        const state = pop();
        const obj = top();
        const g = obj !== null && typeof obj === "object" ? objectGlobals.get(obj) : undefined;
        if (g?.build) {
          stack[stack.length - 1] = g.build(obj, state);
        } else if (obj instanceof Map && state instanceof Map) {
          for (const [k, v] of state) obj.set(k, v);
        } else if (obj !== null && typeof obj === "object" && state instanceof Map) {
          for (const [k, v] of state) (obj as Record<string, unknown>)[String(k)] = v;
        } else if (state !== null) {
          fail("BUILD on an object that does not accept state");
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
