/**
 * A minimal ONNX `ModelProto` encoder: just enough protobuf to build the
 * small graphs the accelerated kernels hand to ONNX Runtime.
 * Field numbers follow onnx/onnx.proto.
 * @module
 */

class ProtoWriter {
  #bytes: number[] = [];

  varint(value: number): void {
    let v = BigInt(value);
    if (v < 0n) v += 1n << 64n;
    while (v >= 0x80n) {
      this.#bytes.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.#bytes.push(Number(v));
  }

  int(field: number, value: number): void {
    this.varint((field << 3) | 0);
    this.varint(value);
  }

  float(field: number, value: number): void {
    this.varint((field << 3) | 5);
    this.#bytes.push(...new Uint8Array(new Float32Array([value]).buffer));
  }

  bytes(field: number, data: Uint8Array): void {
    this.varint((field << 3) | 2);
    this.varint(data.length);
    for (const b of data) this.#bytes.push(b);
  }

  string(field: number, text: string): void {
    this.bytes(field, new TextEncoder().encode(text));
  }

  message(field: number, build: (w: ProtoWriter) => void): void {
    const inner = new ProtoWriter();
    build(inner);
    this.bytes(field, inner.finish());
  }

  finish(): Uint8Array {
    return new Uint8Array(this.#bytes);
  }
}

/** An ONNX node attribute: an int or a float. */
export type OnnxAttribute = { name: string; int: number } | { name: string; float: number };

/** A graph input or output: a float32 tensor of the given rank with symbolic dimensions. */
export interface OnnxValue {
  /** Tensor name. */
  name: string;
  /** Number of dimensions; every dimension is symbolic. */
  rank: number;
}

/** One node of an ONNX graph. */
export interface OnnxNode {
  /** Operator type, e.g. `MatMul` or `FusedMatMul`. */
  opType: string;
  /** Operator domain: `""` for the default domain, `com.microsoft` for contrib ops. */
  domain?: string;
  /** Names of the values the node reads. */
  inputs: string[];
  /** Names of the values the node writes. */
  outputs: string[];
  /** Node attributes. */
  attributes?: OnnxAttribute[];
}

/** A float32 ONNX graph: nodes in topological order, scalar float constants as initializers. */
export interface OnnxGraph {
  /** The nodes, each reading graph inputs, constants or earlier nodes' outputs. */
  nodes: OnnxNode[];
  /** Graph inputs. */
  inputs: OnnxValue[];
  /** Graph outputs. */
  outputs: OnnxValue[];
  /** Scalar float32 constants, by name. */
  constants?: Record<string, number>;
}

/** A single-node ONNX graph. */
export interface OnnxSingleNodeGraph {
  /** Operator type, e.g. `MatMul` or `FusedMatMul`. */
  opType: string;
  /** Operator domain: `""` for the default domain, `com.microsoft` for contrib ops. */
  domain: string;
  /** Graph inputs, in the order the node takes them. */
  inputs: OnnxValue[];
  /** Graph outputs. */
  outputs: OnnxValue[];
  /** Node attributes. */
  attributes?: OnnxAttribute[];
}

const ONNX_FLOAT = 1;
const ATTR_FLOAT = 1;
const ATTR_INT = 2;

function valueInfo(w: ProtoWriter, field: number, value: OnnxValue): void {
  w.message(field, (vi) => {
    vi.string(1, value.name);
    vi.message(2, (type) =>
      type.message(1, (tensor) => {
        tensor.int(1, ONNX_FLOAT);
        tensor.message(2, (shape) => {
          for (let d = 0; d < value.rank; d++) shape.message(1, (dim) => dim.string(2, `${value.name}_${d}`));
        });
      }));
  });
}

/** Encodes a float32 graph as ONNX model bytes (IR 8, opset 17, com.microsoft 1). */
export function encodeModel(graph: OnnxGraph): Uint8Array {
  const m = new ProtoWriter();
  m.int(1, 8); // ir_version
  m.string(2, "retfiner"); // producer_name
  m.message(8, (o) => {
    o.string(1, "");
    o.int(2, 17);
  });
  m.message(8, (o) => {
    o.string(1, "com.microsoft");
    o.int(2, 1);
  });
  m.message(7, (g) => {
    graph.nodes.forEach((node, index) => {
      g.message(1, (n) => {
        for (const i of node.inputs) n.string(1, i);
        for (const o of node.outputs) n.string(2, o);
        n.string(3, `${node.opType}_${index}`);
        n.string(4, node.opType);
        for (const a of node.attributes ?? []) {
          n.message(5, (attr) => {
            attr.string(1, a.name);
            if ("int" in a) {
              attr.int(20, ATTR_INT);
              attr.int(3, a.int);
            } else {
              attr.int(20, ATTR_FLOAT);
              attr.float(2, a.float);
            }
          });
        }
        if (node.domain) n.string(7, node.domain);
      });
    });
    g.string(2, graph.nodes.map((n) => n.opType.toLowerCase()).join("_"));
    for (const [name, value] of Object.entries(graph.constants ?? {})) {
      // TensorProto: a 0-d float tensor (no dims), data_type, name, raw_data (little endian).
      g.message(5, (t) => {
        t.int(2, ONNX_FLOAT);
        t.string(8, name);
        t.bytes(9, new Uint8Array(new Float32Array([value]).buffer));
      });
    }
    for (const i of graph.inputs) valueInfo(g, 11, i);
    for (const o of graph.outputs) valueInfo(g, 12, o);
  });
  return m.finish();
}

/** Encodes a one-node float32 graph as ONNX model bytes (IR 8, opset 17, com.microsoft 1). */
export function encodeSingleNodeModel(graph: OnnxSingleNodeGraph): Uint8Array {
  return encodeModel({
    nodes: [{
      opType: graph.opType,
      domain: graph.domain,
      inputs: graph.inputs.map((i) => i.name),
      outputs: graph.outputs.map((o) => o.name),
      attributes: graph.attributes,
    }],
    inputs: graph.inputs,
    outputs: graph.outputs,
  });
}
