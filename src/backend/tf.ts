/**
 * The one place the package imports TensorFlow.js. Everything else imports
 * `tf` from here, so the whole package shares one engine and one registry.
 * @module
 */
import * as tfjs from "@tensorflow/tfjs";

export { tfjs as tf };

/** A TensorFlow.js tensor. */
export type Tensor = tfjs.Tensor;

/** A trainable TensorFlow.js variable. */
export type Variable = tfjs.Variable;

/**
 * The TensorFlow.js namespace (`@tensorflow/tfjs` 4.22) that this package
 * computes with; use it to build inputs and read outputs.
 */
export const tensorflow: typeof tfjs = tfjs;
