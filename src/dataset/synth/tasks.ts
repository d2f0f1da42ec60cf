/**
 * The seven probing tasks of the synthetic benchmark, mirroring in kind the
 * paper's downstream datasets (method notes §4).
 * @module
 */
import type { Rng } from "../../util/rng.ts";
import { type Diagnosis, samplePathology } from "./diseases.ts";
import type { Pathology } from "./render.ts";

/** One class of a probing task: its folder name and how its scans are drawn. */
export interface TaskClass {
  /** Folder name (classes are sorted alphabetically, as ImageFolder does). */
  name: string;
  /** Draws a diagnosis and pathology for one scan of this class. */
  draw(rng: Rng): { diagnosis: Diagnosis; pathology: Pathology };
}

/** A probing task. */
export interface TaskSpec {
  /** Folder name of the task. */
  id: string;
  /** What the task is. */
  title: string;
  /** The real dataset it mirrors. */
  mirrors: string;
  /** Its classes. */
  classes: TaskClass[];
}

const cls = (name: string, ...options: Diagnosis[]): TaskClass => ({
  name,
  draw(rng) {
    const diagnosis = options[rng.int(options.length)];
    return { diagnosis, pathology: samplePathology(diagnosis, rng) };
  },
});

const glaucomaGrade = (name: string, range: [number, number]): TaskClass => ({
  name,
  draw: (rng) => ({
    diagnosis: range[1] <= 0.1 ? "normal" : "glaucoma",
    pathology: samplePathology("glaucoma", rng, { rnflRange: range }),
  }),
});

/** The seven tasks, in the order reports list them. */
export const SYNTH_TASKS: readonly TaskSpec[] = [
  {
    id: "amd_vs_normal",
    title: "AMD vs normal",
    mirrors: "Duke iAMD",
    classes: [cls("AMD", "amd_dry", "amd_dry", "ga"), cls("Control", "normal")],
  },
  {
    id: "glaucoma_vs_normal",
    title: "glaucoma vs normal",
    mirrors: "Harvard Glaucoma",
    classes: [glaucomaGrade("glaucoma", [0.35, 1]), glaucomaGrade("non_glaucoma", [0, 0.08])],
  },
  {
    id: "normal_amd_dme",
    title: "normal / AMD / DME",
    mirrors: "Noor Eye Hospital",
    classes: [cls("AMD", "amd_dry"), cls("DME", "dme"), cls("NORMAL", "normal")],
  },
  {
    id: "octdl_7class",
    title: "7-class OCTDL-like",
    mirrors: "OCTDL",
    classes: [
      cls("AMD", "amd_dry", "amd_wet"),
      cls("DME", "dme"),
      cls("ERM", "erm"),
      cls("NO", "normal"),
      cls("RAO", "rao"),
      cls("RVO", "rvo"),
      cls("VID", "vmt"),
    ],
  },
  {
    id: "octid_5class",
    title: "5-class OCTID-like",
    mirrors: "OCTID",
    classes: [
      cls("AMD", "amd_dry", "amd_wet"),
      cls("CSR", "csr"),
      cls("DR", "dr"),
      cls("MH", "hole"),
      cls("NORMAL", "normal"),
    ],
  },
  {
    id: "normal_drusen_cnv",
    title: "normal / drusen / CNV",
    mirrors: "NEH-UT",
    classes: [cls("CNV", "amd_wet"), cls("DRUSEN", "amd_dry"), cls("NORMAL", "normal")],
  },
  {
    id: "glaucoma_grading",
    title: "3-grade glaucoma",
    mirrors: "GAMMA",
    classes: [
      glaucomaGrade("advanced", [0.7, 1]),
      glaucomaGrade("early", [0.3, 0.6]),
      glaucomaGrade("non_glaucoma", [0, 0.08]),
    ],
  },
];
