// Collecting the bench's figures section by section, printing them as one
// table, and writing them as JSON. A section that throws keeps the figures it
// recorded before failing, and its error is reported beside them.

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { aborted } from "./proc.js";

export interface Figure {
  key: string;
  label: string;
  value: number;
  unit: string;
  display: string;
  target?: string | undefined;
  met?: boolean | undefined;
}

export interface SectionReport {
  id: number;
  title: string;
  status: "ok" | "failed";
  seconds: number;
  figures: Figure[];
  notes: string[];
  error?: string | undefined;
  /** Failed attempts the section retried past (a flaky product bug is still a failure). */
  failures: string[];
  /** Raw samples, for the JSON only. */
  samples: Record<string, number[]>;
}

const MAX_FAILURES = 3;

export class Section {
  readonly report: SectionReport;

  constructor(id: number, title: string) {
    this.report = { id, title, status: "ok", seconds: 0, figures: [], notes: [], failures: [], samples: {} };
  }

  figure(
    key: string,
    label: string,
    value: number,
    unit: string,
    display: string,
    target?: { text: string; met: boolean },
  ): void {
    this.report.figures.push({ key, label, value, unit, display, target: target?.text, met: target?.met });
  }

  note(text: string): void {
    this.report.notes.push(text);
  }

  /**
   * Runs one measured attempt; a failure is recorded and the attempt made
   * again, so one flaky run neither hides the figures nor goes unreported.
   * Gives up (throws) once the section has seen `MAX_FAILURES` failures.
   */
  async attempt<T>(what: string, run: () => Promise<T>): Promise<T> {
    for (;;) {
      try {
        return await run();
      } catch (error) {
        if (aborted()) throw error;
        const message = error instanceof Error ? error.message : String(error);
        this.report.failures.push(`${what}: ${message}`);
        progress(`FAILED (${what}): ${message.split("\n")[0]}`);
        if (this.report.failures.length >= MAX_FAILURES) {
          throw new Error(`giving up after ${MAX_FAILURES} failed attempts`);
        }
      }
    }
  }

  samples(key: string, values: readonly number[]): void {
    this.report.samples[key] = values.map((v) => Number(v.toFixed(2)));
  }
}

export async function runSection(
  id: number,
  title: string,
  body: (section: Section) => Promise<void>,
): Promise<SectionReport> {
  const section = new Section(id, title);
  const started = Date.now();
  process.stderr.write(`\n[${id}] ${title}\n`);
  try {
    if (aborted()) throw new Error("not run: interrupted");
    await body(section);
  } catch (error) {
    section.report.status = "failed";
    const message = error instanceof Error ? error.message : String(error);
    section.report.error =
      aborted() && !message.includes("interrupted") ? `interrupted (${message.split("\n")[0]})` : message;
    process.stderr.write(`    FAILED: ${section.report.error.split("\n")[0]}\n`);
  }
  if (section.report.failures.length > 0) section.report.status = "failed";
  section.report.seconds = Number(((Date.now() - started) / 1000).toFixed(1));
  return section.report;
}

/** A progress line on stderr while the bench runs (the table comes at the end, on stdout). */
export function progress(text: string): void {
  process.stderr.write(`    ${text}\n`);
}

function pad(text: string, width: number): string {
  return text + " ".repeat(Math.max(0, width - [...text].length));
}

export function renderTable(sections: readonly SectionReport[]): string {
  const rows: string[][] = [["", "Figure", "Value", "Target", ""]];
  for (const section of sections) {
    rows.push([`${section.id}. ${section.title}`, "", "", "", section.status === "failed" ? "FAILED" : ""]);
    for (const figure of section.figures) {
      const verdict = figure.met === undefined ? "" : figure.met ? "met" : "MISSED";
      rows.push(["", figure.label, figure.display, figure.target ?? "", verdict]);
    }
  }
  const widths = [0, 1, 2, 3, 4].map((i) =>
    Math.max(...rows.filter((r) => r[1] !== "" || i === 0).map((r) => [...(r[i] ?? "")].length)),
  );
  const lines: string[] = [];
  for (const row of rows) {
    if (row[1] === "" && row[0] !== "") {
      lines.push("");
      lines.push(`${row[0]}${row[4] ? `  [${row[4]}]` : ""}`);
      continue;
    }
    const [, label = "", value = "", target = "", verdict = ""] = row;
    lines.push(
      `  ${pad(label, widths[1]!)}  ${pad(value, widths[2]!)}  ${pad(target, widths[3]!)}  ${verdict}`.trimEnd(),
    );
  }
  const notes: string[] = [];
  for (const section of sections) {
    for (const note of section.notes) notes.push(`  [${section.id}] ${note}`);
    section.failures.forEach((failure, i) => {
      notes.push(
        `  [${section.id}] FAILED attempt ${i + 1} (measured again): ${failure.split("\n").join("\n      ")}`,
      );
    });
    if (section.error) {
      notes.push(`  [${section.id}] FAILED: ${section.error.split("\n").join("\n      ")}`);
    }
  }
  if (notes.length > 0) lines.push("", "Notes and failures:", ...notes);
  return lines.join("\n");
}

export function writeJson(dir: string, document: unknown): string {
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const file = join(dir, `bench-${stamp}.json`);
  const text = `${JSON.stringify(document, null, 2)}\n`;
  writeFileSync(file, text);
  writeFileSync(join(dir, "latest.json"), text);
  return file;
}
