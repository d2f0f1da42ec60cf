/**
 * Error types shared by every module. Each module throws its own subclass so a
 * caller can tell a bad weight file from a bad manifest without parsing text.
 * @module
 */

/** Base class of every error this package throws on purpose. */
export class RetfinerError extends Error {
  /**
   * Creates an error with a message that names the file, line or key at fault.
   * @param message what went wrong, naming the file, line or key at fault
   * @param options `cause`: the underlying error
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A compute backend could not be set up, or a kernel was called with bad arguments. */
export class BackendError extends RetfinerError {}

/** MPI could not be loaded, is of another ABI, or a collective failed (data-parallel runs). */
export class MpiError extends RetfinerError {}

/** A weight, tensor or array file is malformed, truncated, unsafe or of the wrong kind. */
export class CheckpointError extends RetfinerError {}

/** An image, manifest, dataset folder or report is missing or unreadable. */
export class DatasetError extends RetfinerError {}

/** A model was configured or loaded inconsistently. */
export class EncoderError extends RetfinerError {}

/** Refinement could not run or could not continue (e.g. a non-finite loss). */
export class RefineError extends RetfinerError {}

/**
 * An optimiser update (src/optim/adamw.ts) could not run or would leave a non-finite weight or moment. It extends
 * {@link RefineError}, which the optimiser threw before it had a module of its own, so `instanceof RefineError` checks
 * keep working; the stand-ins' pretraining uses the same optimiser.
 */
export class OptimizerError extends RefineError {}

/** Linear probing or its statistics got inputs it cannot handle. */
export class ProbeError extends RetfinerError {}

/** A command-line flag or configuration value is invalid. */
export class UsageError extends RetfinerError {}
