// Option parsers and options several commands share. A parser's refusal is a
// usage error, reported before any gateway is asked.

import { Option } from "@commander-js/extra-typings";
import { OpenShellError } from "../core/errors.js";

/** A repeatable option's values, in the order given. */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** A whole number, or a usage error naming the flag. */
export function integer(flag: string) {
  return (value: string): number => {
    if (!/^-?\d+$/.test(value.trim())) {
      throw new OpenShellError("usage", `${flag} ${value}: expected a whole number`);
    }
    return Number(value);
  };
}

export const outputOption = () =>
  new Option("-o, --output <format>", "output format")
    .choices(["table", "json", "yaml"] as const)
    .default("table");

/** `-o text|json` for a command whose result is prose for people unless a script asks for JSON. */
export const jsonOutputOption = (what = "json: the result as one JSON document on stdout") =>
  new Option("-o, --output <format>", `text, or ${what}`).choices(["text", "json"] as const);

/**
 * Whether `sandbox create` attaches to its command and so exits with its
 * status (README "Attaching"): on a terminal, or with --attach or --no-keep;
 * never with --detach or -o.
 */
export function createAttaches(
  o: {
    detach?: boolean | undefined;
    attach?: boolean | undefined;
    keep?: boolean | undefined;
    output?: string | undefined;
  },
  terminal: boolean,
): boolean {
  return (
    o.detach !== true &&
    (o.output ?? "table") === "table" &&
    (o.attach === true || o.keep === false || terminal)
  );
}

/** A command's help epilogue: "Examples:" and one command line each. */
export function examples(...lines: string[]): string {
  return `\nExamples:\n${lines.map((line) => `  ${line}`).join("\n")}`;
}
