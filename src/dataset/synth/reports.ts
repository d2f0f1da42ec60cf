/**
 * Clinical-style OCT reports for synthetic B-scans: findings with severity
 * words and varied phrasing, negations of absent findings, laterality, and
 * sometimes an impression, so that text carries what a picture-only model
 * must infer. Positive findings come first, so the authors' 30-token
 * truncation (§1.4) mostly drops negations.
 * @module
 */
import type { Rng } from "../../util/rng.ts";
import type { Pathology } from "./render.ts";
import type { Diagnosis } from "./diseases.ts";

type Sev = "mild" | "moderate" | "severe";

/** Severity above which a report names a finding (as present, with a severity word); at or below it, absent. */
export const REPORTED_SEVERITY = 0.12;

function grade(v: number): Sev {
  return v < 0.4 ? "mild" : v < 0.7 ? "moderate" : "severe";
}

const SEVERITY_WORDS: Record<Sev, string[]> = {
  mild: ["mild", "small", "subtle", "minimal"],
  moderate: ["moderate", "intermediate", "medium"],
  severe: ["severe", "large", "marked", "extensive"],
};

/** Positive phrasings per finding; `{s}` is a severity word. */
const POSITIVE: Record<keyof Pathology, string[]> = {
  drusen: [
    "{s} drusen",
    "{s} drusen beneath the rpe",
    "{s} soft drusen",
    "drusen, {s}",
    "{s} rpe elevations consistent with drusen",
  ],
  irf: ["{s} intraretinal fluid", "{s} intraretinal cysts", "cystoid spaces, {s}", "{s} cystoid macular edema"],
  srf: [
    "{s} subretinal fluid",
    "{s} serous retinal detachment",
    "subretinal fluid, {s}",
    "{s} neurosensory detachment",
  ],
  ped: [
    "{s} pigment epithelial detachment",
    "{s} ped with hyperreflective material",
    "{s} fibrovascular ped",
    "{s} choroidal neovascular membrane",
  ],
  erm: ["{s} epiretinal membrane", "erm with {s} wrinkling", "{s} epiretinal fibrosis"],
  hole: ["{s} full thickness macular hole", "macular hole, {s}", "{s} foveal defect with hole"],
  rnflThinning: [
    "{s} rnfl thinning",
    "{s} thinning of the nerve fiber layer",
    "nerve fiber layer thin, {s}",
    "{s} ganglion cell loss",
  ],
  ga: ["{s} geographic atrophy", "{s} rpe atrophy with hypertransmission", "outer retinal atrophy, {s}"],
  exudates: ["{s} hard exudates", "{s} hyperreflective foci", "exudates, {s}"],
  innerIschemia: ["{s} inner retinal hyperreflectivity", "{s} inner retinal swelling", "{s} ischemic inner retina"],
  traction: [
    "{s} vitreomacular traction",
    "{s} vitreous traction on the fovea",
    "vitreomacular adhesion with {s} traction",
  ],
};

const NEGATIVE: Record<keyof Pathology, string[]> = {
  drusen: ["no drusen", "drusen absent"],
  irf: ["no intraretinal fluid", "no cysts", "no irf"],
  srf: ["no subretinal fluid", "no srf"],
  ped: ["no ped", "no pigment epithelial detachment"],
  erm: ["no erm", "no epiretinal membrane"],
  hole: ["foveal contour preserved", "no macular hole"],
  rnflThinning: ["rnfl within normal limits", "normal nerve fiber layer"],
  ga: ["rpe intact", "no atrophy"],
  exudates: ["no exudates"],
  innerIschemia: ["inner retina normal"],
  traction: ["vitreous detached", "no traction"],
};

const IMPRESSION: Record<Diagnosis, string[]> = {
  normal: ["normal macula", "unremarkable scan", "no pathology"],
  amd_dry: ["consistent with dry amd", "intermediate amd", "age related macular degeneration"],
  amd_wet: ["consistent with wet amd", "neovascular amd", "exudative amd"],
  ga: ["consistent with geographic atrophy", "late dry amd"],
  dme: ["consistent with diabetic macular edema", "dme"],
  dr: ["diabetic retinopathy", "consistent with dr"],
  rvo: ["consistent with vein occlusion", "rvo with edema"],
  rao: ["consistent with artery occlusion", "rao"],
  erm: ["epiretinal membrane", "consistent with erm"],
  vmt: ["vitreomacular interface disease", "vmt"],
  hole: ["macular hole", "consistent with macular hole"],
  csr: ["central serous chorioretinopathy", "consistent with csr"],
  glaucoma: ["glaucomatous damage", "consistent with glaucoma"],
};

const EYE: Record<"OD" | "OS", string[]> = { OD: ["od:", "right eye:", "od"], OS: ["os:", "left eye:", "os"] };

/**
 * Writes a report for a scan with the given findings.
 * @param pathology the findings' severities
 * @param diagnosis the diagnosis
 * @param eye the eye
 * @param rng the generator (phrasing)
 * @returns the report text
 */
export function writeReport(pathology: Pathology, diagnosis: Diagnosis, eye: "OD" | "OS", rng: Rng): string {
  const pick = (xs: string[]) => xs[rng.int(xs.length)];
  const positives: string[] = [];
  const negatives: string[] = [];
  const keys = Object.keys(POSITIVE) as (keyof Pathology)[];
  for (const k of keys) {
    const v = pathology[k];
    if (v > REPORTED_SEVERITY) positives.push(pick(POSITIVE[k]).replace("{s}", pick(SEVERITY_WORDS[grade(v)])));
    else if (rng.uniform() < 0.3) negatives.push(pick(NEGATIVE[k]));
  }
  rng.shuffle(positives);
  rng.shuffle(negatives);
  const parts = [...positives, ...negatives];
  if (parts.length === 0) parts.push(pick(IMPRESSION.normal));
  if (rng.uniform() < 0.5) {
    const impression = pick(IMPRESSION[diagnosis]);
    if (rng.uniform() < 0.5) parts.unshift(impression);
    else parts.push(`impression: ${impression}`);
  }
  return `${pick(EYE[eye])} ${parts.join(". ")}.`;
}
