/**
 * Procedural OCT B-scan renderer for the synthetic benchmark: retinal layers
 * (ILM, RNFL, GCL, IPL, INL, OPL, ONL, ELM, ellipsoid zone, RPE, choroid)
 * with a foveal pit, eight pathologies with a severity each, and scanner
 * variation (speckle, blur, contrast, noise floor, tilt, position).
 * @module
 */
import type { Rng } from "../../util/rng.ts";
import type { GreyImage } from "../image.ts";

/** Severity of each pathology, 0 = absent, up to 1. */
export interface Pathology {
  /** Drusen: dome-shaped RPE elevations with medium-reflective material. */
  drusen: number;
  /** Intraretinal fluid: dark cystoid spaces in the INL/ONL. */
  irf: number;
  /** Subretinal fluid: dark serous detachment between photoreceptors and RPE. */
  srf: number;
  /** Pigment epithelial detachment / choroidal neovascularisation. */
  ped: number;
  /** Epiretinal membrane: hyperreflective line on the ILM with wrinkling. */
  erm: number;
  /** Full-thickness macular hole. */
  hole: number;
  /** Retinal nerve fibre layer thinning (glaucoma). */
  rnflThinning: number;
  /** Geographic atrophy: RPE/EZ loss with choroidal hypertransmission. */
  ga: number;
  /** Hard exudates / hyperreflective foci with shadowing. */
  exudates: number;
  /** Inner-retina hyperreflectivity and swelling (artery occlusion). */
  innerIschemia: number;
  /** Vitreomacular traction: vitreous membrane tenting the fovea. */
  traction: number;
}

/**
 * A pathology state with every severity 0.
 * @returns the state
 */
export function healthy(): Pathology {
  return {
    drusen: 0,
    irf: 0,
    srf: 0,
    ped: 0,
    erm: 0,
    hole: 0,
    rnflThinning: 0,
    ga: 0,
    exudates: 0,
    innerIschemia: 0,
    traction: 0,
  };
}

/** Everything needed to render one B-scan. */
export interface ScanSpec {
  /** Right (`OD`) or left (`OS`) eye; flips the nasal/temporal RNFL asymmetry. */
  eye: "OD" | "OS";
  /** Pathologies. */
  pathology: Pathology;
  /** Seed of the per-scan randomness (anatomy, lesion placement, speckle). */
  seed: number;
}

const REFLECTIVITY = {
  vitreous: 0.04,
  rnfl: 0.72,
  gcl: 0.42,
  ipl: 0.55,
  inl: 0.24,
  opl: 0.5,
  onl: 0.16,
  elm: 0.42,
  myoid: 0.22,
  ez: 0.82,
  interdig: 0.35,
  rpe: 0.95,
  choroid: 0.5,
  sclera: 0.12,
};

/** Scanner profiles: the same anatomy looks different on different devices. */
const SCANNERS = [
  { speckle: 6, blur: 0.8, gamma: 1.0, gain: 1.0, floor: 0.02, noise: 0.03 },
  { speckle: 3, blur: 1.2, gamma: 0.8, gain: 1.1, floor: 0.05, noise: 0.06 },
  { speckle: 4, blur: 1.0, gamma: 1.25, gain: 0.9, floor: 0.03, noise: 0.04 },
];

function gammaSample(rng: Rng, k: number): number {
  // Sum of k exponentials = -log of a product of k uniforms (integer-shape gamma), mean 1: speckle.
  let prod = 1;
  for (let i = 0; i < k; i++) prod *= rng.uniform32();
  return -Math.log(prod) / k;
}

function blur1d(src: Float32Array, w: number, h: number, sigma: number, horizontal: boolean): Float32Array {
  const r = Math.max(1, Math.ceil(sigma * 2.5));
  const k = new Float32Array(2 * r + 1);
  let sum = 0;
  for (let i = -r; i <= r; i++) sum += k[i + r] = Math.exp(-(i * i) / (2 * sigma * sigma));
  for (let i = 0; i < k.length; i++) k[i] /= sum;
  const out = new Float32Array(src.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let acc = 0;
      for (let i = -r; i <= r; i++) {
        const xx = horizontal ? Math.min(w - 1, Math.max(0, x + i)) : x;
        const yy = horizontal ? y : Math.min(h - 1, Math.max(0, y + i));
        acc += k[i + r] * src[yy * w + xx];
      }
      out[y * w + x] = acc;
    }
  }
  return out;
}

interface Bump {
  center: number;
  width: number;
  height: number;
}

/**
 * Renders one B-scan of `width` × `height` pixels, values in [0, 1].
 * @param spec the scan's pathology, eye and appearance
 * @param rng the generator
 * @param width width in pixels
 * @param height height in pixels
 * @returns the image
 */
export function renderBscan(spec: ScanSpec, rng: Rng, width = 256, height = 256): GreyImage {
  const p = spec.pathology;
  const W = width;
  const H = height;
  const s = H / 256; // geometry was designed at 256 px depth
  const scanner = SCANNERS[rng.int(SCANNERS.length)];
  // --- global geometry and nuisance variation
  const top = (40 + rng.uniformRange(-22, 22)) * s;
  const tilt = rng.uniformRange(-0.12, 0.12);
  const curvature = rng.uniformRange(10, 45) * s;
  const fovea = W * (0.5 + rng.uniformRange(-0.08, 0.08));
  const pitDepth = rng.uniformRange(0.65, 0.9);
  const pitWidth = W * rng.uniformRange(0.07, 0.1);
  const nasalSign = spec.eye === "OD" ? -1 : 1;
  const thick = {
    rnfl: rng.uniformRange(7, 10) * s * (1 - 0.75 * p.rnflThinning),
    gcl: rng.uniformRange(9, 12) * s * (1 - 0.35 * p.rnflThinning),
    ipl: rng.uniformRange(7, 9) * s,
    inl: rng.uniformRange(7, 9) * s * (1 + 0.8 * Math.max(p.irf, p.innerIschemia * 0.6)),
    opl: rng.uniformRange(4, 6) * s,
    onl: rng.uniformRange(15, 19) * s * (1 + 0.6 * p.irf),
    elm: 1.5 * s,
    myoid: 3 * s,
    ez: 3 * s,
    interdig: 2.5 * s,
    rpe: 4 * s,
    choroid: rng.uniformRange(22, 32) * s,
  };
  // --- lesion placement
  const bumps = (n: number, widthRange: [number, number], heightRange: [number, number], spread: number): Bump[] =>
    Array.from({ length: n }, () => ({
      center: fovea + rng.uniformRange(-spread, spread) * W,
      width: rng.uniformRange(...widthRange) * W,
      height: rng.uniformRange(...heightRange) * s,
    }));
  const drusen = p.drusen > 0
    ? bumps(1 + Math.round(p.drusen * 7), [0.012, 0.03 + 0.03 * p.drusen], [2, 3 + 9 * p.drusen], 0.32)
    : [];
  const ped = p.ped > 0
    ? bumps(1, [0.05 + 0.06 * p.ped, 0.08 + 0.08 * p.ped], [8 + 22 * p.ped, 10 + 30 * p.ped], 0.08)
    : [];
  const srf = p.srf > 0
    ? bumps(1, [0.07 + 0.08 * p.srf, 0.1 + 0.1 * p.srf], [5 + 14 * p.srf, 7 + 20 * p.srf], 0.05)
    : [];
  const cysts = p.irf > 0
    ? Array.from({ length: 2 + Math.round(p.irf * 9) }, () => ({
      x: fovea + rng.uniformRange(-0.22, 0.22) * W,
      rx: rng.uniformRange(0.008, 0.02 + 0.03 * p.irf) * W,
      ry: rng.uniformRange(2, 4 + 7 * p.irf) * s,
      layer: rng.uniform() < 0.6 ? "inl" : "onl",
      offset: rng.uniformRange(0.2, 0.8),
    }))
    : [];
  const exudates = p.exudates > 0
    ? Array.from({ length: 2 + Math.round(p.exudates * 10) }, () => ({
      x: fovea + rng.uniformRange(-0.3, 0.3) * W,
      r: rng.uniformRange(1.2, 2.5) * s,
      depth: rng.uniformRange(0.35, 0.75),
    }))
    : [];
  const gaStart = fovea + rng.uniformRange(-0.25, 0.05) * W;
  const gaWidth = p.ga * rng.uniformRange(0.12, 0.25) * W;
  const holeWidth = p.hole * rng.uniformRange(0.03, 0.06) * W;
  const tractionWidth = rng.uniformRange(0.05, 0.09) * W;
  const phaseErm = rng.uniformRange(0, 6.28);
  const bumpAt = (list: Bump[], x: number) => {
    let h = 0;
    for (const b of list) {
      const d = (x - b.center) / b.width;
      if (Math.abs(d) < 1) h = Math.max(h, b.height * Math.cos((d * Math.PI) / 2) ** 2);
    }
    return h;
  };

  // Choroid texture: a smooth random field (vessels and stroma), bilinearly upsampled.
  const gw = 24;
  const gh = 8;
  const field = Float32Array.from({ length: gw * gh }, () => rng.uniform());
  const choroidTexture = (x: number, depth: number) => {
    const fx = (x / W) * (gw - 1);
    const fy = Math.min(0.999, depth) * (gh - 1);
    const x0 = Math.floor(fx);
    const y0 = Math.floor(fy);
    const ax = fx - x0;
    const ay = fy - y0;
    const at = (i: number, j: number) => field[Math.min(gh - 1, j) * gw + Math.min(gw - 1, i)];
    return (1 - ay) * ((1 - ax) * at(x0, y0) + ax * at(x0 + 1, y0)) +
      ay * ((1 - ax) * at(x0, y0 + 1) + ax * at(x0 + 1, y0 + 1));
  };

  const img = new Float32Array(W * H);
  const shadow = new Float32Array(W);
  for (let x = 0; x < W; x++) {
    const dx = (x - W / 2) / W;
    const fov = Math.exp(-(((x - fovea) / pitWidth) ** 2));
    const nasal = 1 + 0.35 * nasalSign * Math.tanh(((x - fovea) / W) * 5);
    // Bruch's membrane follows the globe: a shallow bowl (edges higher), tilted.
    const bruch = top + 75 * s + curvature * (0.25 - dx * dx) * 4 + tilt * (x - W / 2);
    const inner = 1 - pitDepth * fov; // inner layers thin into the foveal pit
    const ermWrinkle = p.erm > 0 ? p.erm * 3 * s * Math.sin(x / (W * 0.03) + phaseErm) * (1 - fov * 0.5) : 0;
    const tent = p.traction > 0 ? p.traction * 18 * s * Math.exp(-(((x - fovea) / tractionWidth) ** 2)) : 0;
    const swell = p.innerIschemia * 5 * s;
    const tRnfl = thick.rnfl * nasal * (0.25 + 0.75 * inner) + swell * 0.5;
    const tGcl = thick.gcl * inner + swell;
    const tIpl = thick.ipl * inner + swell * 0.5;
    const tInl = thick.inl * (0.4 + 0.6 * inner);
    const tOpl = thick.opl * (0.5 + 0.5 * inner);
    const onlNominal = thick.onl * (1 + 0.25 * fov);
    const pedH = bumpAt(ped, x);
    const drusenH = bumpAt(drusen, x);
    const srfH = bumpAt(srf, x);
    // Outer retina rests on the RPE (lifted by drusen / PED, and off it by subretinal fluid).
    const rpeTop = bruch - thick.rpe - Math.max(pedH, drusenH);
    const prBottom = rpeTop - srfH;
    const interdigTop = prBottom - thick.interdig;
    const ezTop = interdigTop - thick.ez;
    const myoidTop = ezTop - thick.myoid;
    const elmTop = myoidTop - thick.elm;
    // The inner retina is lifted by large lesions only partly; the ONL absorbs the rest.
    const lift = 0.8 * Math.max(pedH, srfH) + 0.3 * drusenH;
    const outerStack = thick.rpe + thick.interdig + thick.ez + thick.myoid + thick.elm;
    let ilm = bruch - outerStack - onlNominal - (tRnfl + tGcl + tIpl + tInl + tOpl) - lift - tent + ermWrinkle * 0.5;
    let oplBottom = ilm + tRnfl + tGcl + tIpl + tInl + tOpl;
    const minOnl = 3 * s;
    if (elmTop - oplBottom < minOnl) {
      const shift = minOnl - (elmTop - oplBottom);
      ilm -= shift;
      oplBottom -= shift;
    }
    // Band bottoms, top to bottom.
    const bands: [string, number][] = [
      ["rnfl", ilm + tRnfl],
      ["gcl", ilm + tRnfl + tGcl],
      ["ipl", ilm + tRnfl + tGcl + tIpl],
      ["inl", ilm + tRnfl + tGcl + tIpl + tInl],
      ["opl", oplBottom],
      ["onl", elmTop],
      ["elm", myoidTop],
      ["myoid", ezTop],
      ["ez", interdigTop],
      ["interdig", prBottom],
    ];
    const inHole = p.hole > 0 && Math.abs(x - fovea) < holeWidth;
    const inGa = p.ga > 0 && x >= gaStart && x < gaStart + gaWidth;
    let band = 0;
    for (let yy = 0; yy < H; yy++) {
      let v: number;
      if (yy < ilm) v = REFLECTIVITY.vitreous;
      else if (yy < prBottom) {
        while (band < bands.length - 1 && yy >= bands[band][1]) band++;
        const name = bands[band][0];
        v = REFLECTIVITY[name as keyof typeof REFLECTIVITY];
        if (inGa && (name === "ez" || name === "interdig" || name === "myoid")) v = 0.25;
        if (p.innerIschemia > 0 && (name === "gcl" || name === "ipl" || name === "inl")) v += 0.35 * p.innerIschemia;
        if (inHole && yy < elmTop) v = REFLECTIVITY.vitreous + 0.02;
      } else if (yy < rpeTop) {
        v = 0.06; // subretinal fluid is dark
      } else if (yy < bruch) {
        const underRpe = yy - rpeTop;
        if (underRpe < thick.rpe) v = inGa ? 0.35 : REFLECTIVITY.rpe;
        else if (pedH > drusenH) v = p.ped > 0.5 ? 0.55 + 0.25 * Math.sin(yy * 0.9 + x * 0.3) : 0.15; // fibrovascular vs serous PED
        else v = 0.58; // drusen material
      } else if (yy < bruch + thick.choroid) {
        const depth = (yy - bruch) / thick.choroid;
        v = REFLECTIVITY.choroid * (1 - 0.4 * depth) * (0.55 + 0.7 * choroidTexture(x, depth));
        if (inGa) v += 0.3 * (1 - depth); // hypertransmission
      } else v = REFLECTIVITY.sclera * Math.max(0.3, 1 - (yy - bruch - thick.choroid) / (40 * s));
      img[yy * W + x] = v;
    }
    const b = bands;
    // ERM: a thin bright line just above the ILM.
    if (p.erm > 0) {
      const ey = Math.round(ilm - 2 * s);
      for (let k = 0; k < Math.max(1, Math.round(1.5 * s)); k++) {
        if (ey + k >= 0 && ey + k < H) img[(ey + k) * W + x] = 0.85;
      }
    }
    // Vitreomacular traction: a faint membrane from the tent upwards.
    if (p.traction > 0 && Math.abs(x - fovea) < tractionWidth * 1.6) {
      const vy = Math.round(ilm - 3 * s - 10 * s * (Math.abs(x - fovea) / tractionWidth));
      if (vy >= 0 && vy < H) img[vy * W + x] = 0.6;
    }
    // Intraretinal cysts.
    for (const c of cysts) {
      const d = (x - c.x) / c.rx;
      if (Math.abs(d) >= 1) continue;
      const i = b.findIndex(([n]) => n === c.layer);
      const layerTop = b[i - 1][1];
      const center = layerTop + (b[i][1] - layerTop) * c.offset;
      const half = c.ry * Math.sqrt(1 - d * d);
      for (let yy = Math.max(0, Math.floor(center - half)); yy < Math.min(H, Math.ceil(center + half)); yy++) {
        img[yy * W + x] = 0.05;
      }
    }
    // Hard exudates: bright foci that shadow the layers beneath.
    for (const e of exudates) {
      const d = Math.abs(x - e.x);
      if (d >= e.r) continue;
      const center = ilm + (prBottom - ilm) * e.depth;
      for (let yy = Math.max(0, Math.floor(center - e.r)); yy < Math.min(H, Math.ceil(center + e.r)); yy++) {
        if ((yy - center) ** 2 + d * d < e.r * e.r) img[yy * W + x] = 0.95;
      }
      shadow[x] = Math.max(shadow[x], 0.6 * (1 - d / e.r));
      const sy = Math.ceil(center + e.r);
      for (let yy = sy; yy < H; yy++) img[yy * W + x] *= 1 - shadow[x];
    }
  }
  // --- scanner: depth attenuation, speckle, blur, contrast, noise floor
  const gain = scanner.gain * rng.uniformRange(0.85, 1.15);
  const gamma = scanner.gamma * rng.uniformRange(0.9, 1.1);
  for (let i = 0; i < img.length; i++) img[i] *= gammaSample(rng, scanner.speckle);
  let out = blur1d(img, W, H, scanner.blur * s * rng.uniformRange(0.8, 1.2), true);
  out = blur1d(out, W, H, scanner.blur * s * 0.8, false);
  const noise = scanner.noise * rng.uniformRange(0.7, 1.3);
  const gauss = rng.fillNormal(new Float32Array(out.length));
  for (let i = 0; i < out.length; i++) {
    const v = Math.max(0, out[i] * gain + scanner.floor + noise * gauss[i] * 0.5);
    out[i] = Math.min(1, Math.pow(Math.min(v, 1.5), gamma));
  }
  return { width: W, height: H, data: out };
}
