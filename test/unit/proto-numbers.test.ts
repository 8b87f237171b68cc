// Wire hygiene: our protos against OpenShell's recorded numbers (see
// proto/EXTENSIONS.md). A field both have keeps OpenShell's number; a field
// of ours in one of OpenShell's messages sits at 1000 or above, on no number
// OpenShell uses or reserves; a message or method of ours has a name
// OpenShell does not use; and EXTENSIONS.md lists exactly our fields.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../helpers/cli.js";
import { type ProtoNumbers, protoNumbers } from "../helpers/proto-numbers.js";

const upstream = JSON.parse(
  readFileSync(join(ROOT, "test/fixtures/upstream-proto-numbers.json"), "utf8"),
) as {
  messages: ProtoNumbers;
};
const ours = protoNumbers(join(ROOT, "proto"));
const extensionsDoc = readFileSync(join(ROOT, "proto/EXTENSIONS.md"), "utf8");

/** The first number of ours, far above OpenShell's range. */
const EXTENSION_FLOOR = 1000;

interface Extension {
  message: string;
  field: string;
  number: number;
}

/** What is wrong with our numbers against `reference`'s, one line each; also the extension fields found. */
function check(our: ProtoNumbers, reference: ProtoNumbers): { problems: string[]; extensions: Extension[] } {
  const problems: string[] = [];
  const extensions: Extension[] = [];
  for (const [message, numbers] of Object.entries(our)) {
    const theirs = reference[message];
    if (!theirs) continue;
    const used = new Set(Object.values(theirs.fields));
    for (const [field, number] of Object.entries(numbers.fields)) {
      const same = theirs.fields[field];
      if (same !== undefined) {
        if (same !== number) problems.push(`${message}.${field} is ${number}; OpenShell's is ${same}`);
        continue;
      }
      extensions.push({ message, field, number });
      const reserved = theirs.reserved.some(([start, end]) => number >= start && number <= end);
      if (number < EXTENSION_FLOOR || used.has(number) || reserved) {
        problems.push(
          `${message}.${field} = ${number} is in OpenShell's range (extensions start at ${EXTENSION_FLOOR}, on numbers it neither uses nor reserves)`,
        );
      }
    }
  }
  return { problems, extensions };
}

describe("our protos against OpenShell's", () => {
  it("share OpenShell's numbers, and put our fields where OpenShell's next ones cannot land", () => {
    expect(check(ours, upstream.messages).problems).toEqual([]);
  });

  it("fails when an extension field is moved into OpenShell's range, or a shared field renumbered", () => {
    const moved = structuredClone(ours);
    moved["openshell.v1.SandboxSpec"]!.fields.files = 14;
    moved["openshell.v1.SandboxSpec"]!.fields.tty = 15;
    expect(check(moved, upstream.messages).problems).toEqual([
      "openshell.v1.SandboxSpec.tty is 15; OpenShell's is 13",
      "openshell.v1.SandboxSpec.files = 14 is in OpenShell's range (extensions start at 1000, on numbers it neither uses nor reserves)",
    ]);
    const reserved = structuredClone(ours);
    reserved["openshell.v1.SandboxSpec"]!.fields.files = 10;
    expect(check(reserved, upstream.messages).problems).toHaveLength(1);
  });

  it("name messages of our own as OpenShell names none", () => {
    const upstreamNames = new Set(Object.keys(upstream.messages).map((name) => name.split(".").pop()));
    // Top-level ones: a nested message's name (a map's entry) is scoped by its parent's.
    const isNested = (name: string): boolean => ours[name.slice(0, name.lastIndexOf("."))] !== undefined;
    const ownMessages = Object.keys(ours).filter((name) => !upstream.messages[name] && !isNested(name));
    expect(ownMessages.length).toBeGreaterThan(0);
    for (const name of ownMessages) {
      expect(upstreamNames.has(name.split(".").pop()), `${name} is a name OpenShell uses`).toBe(false);
    }
  });

  it("list every extension field in proto/EXTENSIONS.md, and nothing else", () => {
    const documented = [...extensionsDoc.matchAll(/^\| `([\w.]+)` \| `(\w+)` \| (\d+) \|/gm)].map(
      ([, message, field, number]) => `${message}.${field} = ${number}`,
    );
    const found = check(ours, upstream.messages).extensions.map(
      (e) => `${e.message}.${e.field} = ${e.number}`,
    );
    expect(documented.sort()).toEqual(found.sort());
  });
});
