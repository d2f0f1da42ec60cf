/**
 * Diagnoses of the synthetic benchmark and the pathology each one produces,
 * with randomised severities and secondary findings.
 * @module
 */
import type { Rng } from "../../util/rng.ts";
import { healthy, type Pathology } from "./render.ts";

/** Diagnoses the generator knows. */
export type Diagnosis =
  | "normal"
  | "amd_dry"
  | "amd_wet"
  | "ga"
  | "dme"
  | "dr"
  | "rvo"
  | "rao"
  | "erm"
  | "vmt"
  | "hole"
  | "csr"
  | "glaucoma";

/** All diagnoses, in a fixed order. */
export const DIAGNOSES: readonly Diagnosis[] = [
  "normal",
  "amd_dry",
  "amd_wet",
  "ga",
  "dme",
  "dr",
  "rvo",
  "rao",
  "erm",
  "vmt",
  "hole",
  "csr",
  "glaucoma",
];

/** Options for {@link samplePathology}. */
export interface SampleOptions {
  /** Fix the main finding's severity instead of drawing it. */
  severity?: number;
  /** Range of RNFL thinning for glaucoma (used by the grading task). */
  rnflRange?: [number, number];
}

/**
 * Draws the pathology of a scan with diagnosis `dx`.
 * @param dx the diagnosis
 * @param rng the generator
 * @param options severity settings, see {@link SampleOptions}
 * @returns the severities of each finding
 */
export function samplePathology(dx: Diagnosis, rng: Rng, options: SampleOptions = {}): Pathology {
  const p = healthy();
  const sev = () => options.severity ?? rng.uniformRange(0.25, 1);
  const maybe = (prob: number, lo: number, hi: number) => (rng.uniform() < prob ? rng.uniformRange(lo, hi) : 0);
  switch (dx) {
    case "normal":
      p.rnflThinning = rng.uniformRange(0, 0.08);
      break;
    case "amd_dry":
      p.drusen = sev();
      p.ga = maybe(0.15, 0.2, 0.5);
      break;
    case "amd_wet":
      p.ped = sev();
      p.srf = maybe(0.7, 0.2, 0.9);
      p.irf = maybe(0.4, 0.15, 0.6);
      p.drusen = maybe(0.5, 0.15, 0.5);
      break;
    case "ga":
      p.ga = sev();
      p.drusen = maybe(0.6, 0.15, 0.5);
      break;
    case "dme":
      p.irf = sev();
      p.exudates = maybe(0.6, 0.2, 0.8);
      p.srf = maybe(0.25, 0.15, 0.4);
      break;
    case "dr":
      p.exudates = sev();
      p.irf = maybe(0.5, 0.1, 0.4);
      break;
    case "rvo":
      p.irf = sev();
      p.innerIschemia = maybe(0.4, 0.15, 0.4);
      p.exudates = maybe(0.3, 0.1, 0.4);
      break;
    case "rao":
      p.innerIschemia = sev();
      break;
    case "erm":
      p.erm = sev();
      p.irf = maybe(0.15, 0.1, 0.3);
      break;
    case "vmt":
      p.traction = sev();
      p.erm = maybe(0.4, 0.2, 0.6);
      p.irf = maybe(0.2, 0.1, 0.3);
      break;
    case "hole":
      p.hole = sev();
      p.irf = maybe(0.4, 0.15, 0.4);
      break;
    case "csr":
      p.srf = sev();
      p.ped = maybe(0.3, 0.1, 0.25);
      break;
    case "glaucoma": {
      const [lo, hi] = options.rnflRange ?? [0.35, 1];
      p.rnflThinning = options.severity ?? rng.uniformRange(lo, hi);
      break;
    }
  }
  return p;
}
