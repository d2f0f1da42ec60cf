/**
 * Frees memory during tfjs's backward pass as PyTorch's autograd does.
 *
 * tfjs (4.22, `engine.gradients` and `tape.backpropagateGradients`) keeps every
 * tensor a gradient function saved and every intermediate gradient alive until
 * the whole backward pass ends, so a training step's peak memory holds the
 * forward activations and all of their gradients at once. PyTorch frees each
 * node's saved tensors and its output gradients as soon as that node's
 * backward has run.
 *
 * It also keeps only the shapes of what some kernels save (see `SHAPE_ONLY`), and frees each gradient that tfjs has
 * added into an earlier gradient of the same tensor: tfjs keeps the addend until the pass ends, so a weight used in
 * k passes held k gradients at once (the BERT runs four times per RetFiner step: 0.84 GB of the ViT-B + BERT-base
 * step's peak, measured 2026-12-02).
 *
 * Installed, each tape node's gradient function is wrapped: when the backward
 * pass moves on to the next node, the previous node's saved tensors and the
 * gradients of its outputs are disposed (except any tensor the node's own
 * gradient handed on unchanged). Each tensor's gradient is read only by the
 * node that produced the tensor, and tfjs walks the tape once in reverse, so
 * nothing freed is read again. Only outermost gradients are affected; inside
 * higher-order gradients (`gradientDepth > 0`) the tape behaves as tfjs's.
 * @module
 */
import { tf } from "./tf.ts";

type Tensor = tf.Tensor;
type TapeNode = {
  inputs?: Record<string, Tensor>;
  saved?: Tensor[];
  gradient?: (dys: Tensor[]) => Record<string, () => Tensor>;
};
type EngineInternals = {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  addTapeNode(...args: unknown[]): void;
  gradients(...args: unknown[]): unknown;
};

/** The node whose backward ran last, with what may be freed once the next one starts. */
let pending: { saved: Tensor[]; dys: Tensor[]; passedOn: Set<Tensor>; summed: Tensor[] } | undefined;
/** Ids of the tensors that have received a gradient so far in this backward pass. */
let reached = new Set<number>();
/** Gradients that tfjs stored as a tensor's first (so far only) gradient: they must stay. */
let stored = new WeakSet<Tensor>();
/** The gradient the caller passed in for the output (`tf.grads(f)(xs, dy)`), if any. */
let callerDy: Tensor | undefined;
let original: Pick<EngineInternals, "addTapeNode" | "gradients"> | undefined;
let freedTensors = 0;

function releasePending(): void {
  if (!pending) return;
  const { saved, dys, passedOn, summed } = pending;
  pending = undefined;
  for (const t of saved) {
    if (!t.isDisposed) {
      t.dispose();
      freedTensors++;
    }
  }
  for (const t of dys) {
    if (t && !t.isDisposed && !passedOn.has(t) && t !== callerDy) {
      t.dispose();
      freedTensors++;
    }
  }
  // tfjs has added each of these into an earlier gradient of the same tensor (`add(curGradient, dx)`) and keeps
  // only the sum, yet never frees the addend: without this, every use's weight gradient lived until the pass ended.
  for (const t of summed) {
    if (!t.isDisposed && !stored.has(t)) {
      t.dispose();
      freedTensors++;
    }
  }
}

/**
 * Tensors the lean tape has freed early since it was installed (for tests and the bench).
 * @returns the count
 */
export function leanTapeFreed(): number {
  return freedTensors;
}

/**
 * Kernels whose tfjs 4.22 gradient reads only the shapes of what it saved (`gradients/<Kernel>_grad.js`: Reshape's
 * `reshape(dy, x.shape)`, the broadcast reductions of Add and Sub, Sum's and Mean's expansions, Slice's and PadV2's
 * paddings, Concat's split sizes). tfjs keeps the whole input alive to read its shape; the tape keeps a stand-in that
 * has only the shape, so the data can go as soon as nothing else holds it. Reshape matters most: it follows every
 * linear layer and head split, so without this every projection would live until the backward pass.
 */
const SHAPE_ONLY = new Set(["Reshape", "Add", "Sub", "Sum", "Mean", "Slice", "Concat", "PadV2"]);

/** A saved tensor reduced to what those gradients read; already "disposed", so nothing frees it twice. */
function shapeOnly(t: Tensor): Tensor {
  return { shape: t.shape, rank: t.rank, size: t.size, dtype: t.dtype, isDisposed: true, dispose() {} } as Tensor;
}

/** Replaces each saved tensor by its shape, in place (the gradient closure holds this same array), and lets it go. */
function keepShapesOnly(saved: Tensor[]): void {
  for (let i = 0; i < saved.length; i++) {
    const t = saved[i];
    if (!t || t.isDisposed) continue;
    saved[i] = shapeOnly(t);
    t.dispose(); // the tape's own clone: the data stays while the forward pass or another node holds it
  }
}

/** Wraps tfjs's tape so the backward pass frees as it goes (idempotent). */
export function installLeanTape(): void {
  if (original) return;
  const engine = tf.engine() as unknown as EngineInternals;
  const { addTapeNode, gradients } = engine;
  original = { addTapeNode, gradients };
  engine.gradients = function (this: EngineInternals, ...args: unknown[]) {
    if (this.state.gradientDepth === 0) {
      reached = new Set();
      stored = new WeakSet();
      // The caller's dy (`tf.grads(f)(xs, dy)`) starts the pass as the output's gradient; it is the caller's to keep.
      callerDy = args[2] as Tensor | undefined;
    }
    try {
      return gradients.apply(this, args);
    } finally {
      // tfjs's own clean-up has freed the last node's tensors; forget them so a later pass cannot touch them.
      if (this.state.gradientDepth === 0) {
        pending = undefined;
        callerDy = undefined;
      }
    }
  };
  engine.addTapeNode = function (this: EngineInternals, ...args: unknown[]) {
    const [kernelName, , , , saved] = args as [string, unknown, unknown, unknown, Tensor[] | undefined];
    if (saved && SHAPE_ONLY.has(kernelName)) keepShapesOnly(saved);
    addTapeNode.apply(this, args);
    const tape = this.state.activeTape!;
    const node = tape[tape.length - 1];
    const gradient = node.gradient;
    if (!gradient) return;
    node.gradient = (dys: Tensor[]) => {
      if (this.state.gradientDepth !== 0) return gradient(dys);
      releasePending();
      const thunks = gradient(dys);
      const passedOn = new Set<Tensor>();
      const summed: Tensor[] = [];
      pending = { saved: node.saved ?? [], dys, passedOn, summed };
      const wrapped: Record<string, () => Tensor> = {};
      for (const [name, thunk] of Object.entries(thunks)) {
        wrapped[name] = () => {
          const firstNewId = (this as unknown as { constructor: { nextTensorId: number } }).constructor.nextTensorId;
          const dx = thunk();
          passedOn.add(dx);
          // tfjs (tape.ts, backpropagateGradients) stores a tensor's first gradient and adds each later one to it.
          // Only an addend this gradient function created is ours to free: a custom gradient may return a tensor it
          // does not own (a constant, a weight), which tfjs only reads.
          const x = node.inputs?.[name];
          if (x && reached.has(x.id)) {
            if (dx.id >= firstNewId) summed.push(dx);
          } else {
            if (x) reached.add(x.id);
            stored.add(dx);
          }
          return dx;
        };
      }
      return wrapped;
    };
  };
}

/** Restores tfjs's own tape. */
export function uninstallLeanTape(): void {
  if (!original) return;
  Object.assign(tf.engine() as unknown as EngineInternals, original);
  original = undefined;
  pending = undefined;
}
