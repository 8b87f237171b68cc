// ARCHITECTURE.md's layering, enforced: its table says which folders of src/
// each folder may import; this test reads the table and every import in
// src/ (parsed by TypeScript itself) and lists each import that breaks it.

import { readdirSync, readFileSync } from "node:fs";
import { join, posix, relative } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const ROOT = join(import.meta.dirname, "..", "..");

interface Layer {
  /** Folder under src/, e.g. "supervisor/agent". */
  folder: string;
  /** Folders under src/ it may import; its own subtree is always allowed. */
  mayImport: string[];
}

/** The table in ARCHITECTURE.md: `| \`src/x/\` | owns | \`a\`, \`b\` |`. */
function readLayers(markdown: string): Layer[] {
  const layers: Layer[] = [];
  for (const line of markdown.split("\n")) {
    const row = /^\| `src\/([a-z/-]+)\/` \|[^|]*\| (.*) \|$/.exec(line);
    if (!row) continue;
    const mayImport = [...row[2]!.matchAll(/`([a-z/-]+)`/g)].map((match) => match[1]!);
    layers.push({ folder: row[1]!, mayImport });
  }
  return layers;
}

const CORE_NODE_MODULES = new Set(["node:crypto", "node:path", "node:util", "node:buffer"]);
/** Value-only imports from node modules that otherwise do I/O. */
const CORE_NODE_NAMES: Record<string, readonly string[]> = {
  "node:net": ["isIP", "isIPv4", "isIPv6"],
  "node:os": ["constants"],
};
const CORE_PACKAGES = new Set(["yaml"]);
const PATCHES_MODULE = "host/patches.ts";

interface Import {
  specifier: string;
  /** Named imports, or undefined for a namespace, default, side-effect or dynamic import. */
  names: string[] | undefined;
}

function importsOf(path: string, text: string): Import[] {
  const source = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const found: Import[] = [];
  const visit = (node: ts.Node): void => {
    if (
      (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) &&
      node.moduleSpecifier &&
      ts.isStringLiteral(node.moduleSpecifier)
    ) {
      let names: string[] | undefined;
      if (ts.isImportDeclaration(node)) {
        const clause = node.importClause;
        const bindings = clause?.namedBindings;
        if (clause && !clause.name && bindings && ts.isNamedImports(bindings)) {
          names = bindings.elements.map((element) => (element.propertyName ?? element.name).text);
        }
      }
      found.push({ specifier: node.moduleSpecifier.text, names });
    } else if (
      ts.isCallExpression(node) &&
      node.expression.kind === ts.SyntaxKind.ImportKeyword &&
      node.arguments[0] &&
      ts.isStringLiteralLike(node.arguments[0])
    ) {
      found.push({ specifier: node.arguments[0].text, names: undefined });
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

const within = (path: string, folder: string): boolean => path === folder || path.startsWith(`${folder}/`);

/** The most specific layer a file (path under src/) belongs to. */
function layerOf(file: string, layers: readonly Layer[]): Layer | undefined {
  return layers
    .filter((layer) => within(file, layer.folder))
    .sort((a, b) => b.folder.length - a.folder.length)[0];
}

/** Every import in `files` (path under src/ → text) that the layers forbid, one line each. */
function layeringViolations(files: ReadonlyMap<string, string>, layers: readonly Layer[]): string[] {
  const violations: string[] = [];
  for (const [file, text] of files) {
    const layer = layerOf(file, layers);
    if (!layer) {
      violations.push(`${file}: in no folder of ARCHITECTURE.md's table`);
      continue;
    }
    for (const { specifier, names } of importsOf(file, text)) {
      if (specifier.startsWith(".")) {
        const target = posix.normalize(posix.join(posix.dirname(file), specifier));
        if (within(target, layer.folder)) continue;
        if (!layer.mayImport.some((folder) => within(target, folder))) {
          violations.push(
            `${file}: imports ${specifier} (${layerOf(target, layers)?.folder ?? "outside src"})`,
          );
        }
        continue;
      }
      const packageRoot = specifier.startsWith("@")
        ? specifier.split("/").slice(0, 2).join("/")
        : specifier.split("/")[0]!;
      if (!specifier.startsWith("node:") && specifier !== packageRoot && file !== PATCHES_MODULE) {
        // A package's own files, not an entry it exports ("yaml" or "@peculiar/x509"), only in the patches module.
        const subpath = specifier.slice(packageRoot.length);
        if (/\/(build|dist|lib|src)\//.test(`${subpath}/`)) {
          violations.push(`${file}: reaches into ${specifier} (only ${PATCHES_MODULE} may)`);
        }
      }
      if (layer.folder !== "core") continue;
      if (specifier.startsWith("node:")) {
        if (CORE_NODE_MODULES.has(specifier)) continue;
        const permitted = CORE_NODE_NAMES[specifier];
        if (permitted && names?.every((name) => permitted.includes(name))) continue;
        violations.push(
          `${file}: imports ${specifier}${names ? ` { ${names.join(", ")} }` : ""} (core is pure)`,
        );
      } else if (!CORE_PACKAGES.has(packageRoot)) {
        violations.push(`${file}: imports ${specifier} (core imports only ${[...CORE_PACKAGES].join(", ")})`);
      }
    }
  }
  return violations;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile() && entry.name.endsWith(".ts"))
    .map((entry) => relative(join(ROOT, "src"), join(entry.parentPath, entry.name)).split("\\").join("/"));
}

const layers = readLayers(readFileSync(join(ROOT, "ARCHITECTURE.md"), "utf8"));
const tree = new Map(
  sourceFiles(join(ROOT, "src"))
    .filter((file) => !file.startsWith("gen/"))
    .map((file) => [file, readFileSync(join(ROOT, "src", file), "utf8")]),
);

describe("the layering written in ARCHITECTURE.md", () => {
  it("names every folder of src/", () => {
    expect(layers.map((layer) => layer.folder)).toEqual(
      expect.arrayContaining(["gen", "core", "transport", "host", "runtime", "gateway", "supervisor", "cli"]),
    );
    const folders = new Set([...tree.keys()].map((file) => file.split("/")[0]));
    for (const folder of folders) expect(layers.some((layer) => layer.folder === folder)).toBe(true);
  });

  it("holds for every import in src/", () => {
    expect(layeringViolations(tree, layers)).toEqual([]);
  });

  it("catches a rule file that does I/O", () => {
    const withViolation = new Map(tree);
    withViolation.set(
      "core/names.ts",
      `import { readFileSync } from "node:fs";\n${tree.get("core/names.ts")}`,
    );
    expect(layeringViolations(withViolation, layers)).toEqual([
      "core/names.ts: imports node:fs { readFileSync } (core is pure)",
    ]);
    withViolation.set(
      "core/names.ts",
      `import { spawn } from "node:child_process";\n${tree.get("core/names.ts")}`,
    );
    expect(layeringViolations(withViolation, layers)).toHaveLength(1);
    // A value-only name is allowed; the rest of the same module is not.
    withViolation.set(
      "core/names.ts",
      `import { connect, isIP } from "node:net";\n${tree.get("core/names.ts")}`,
    );
    expect(layeringViolations(withViolation, layers)).toEqual([
      "core/names.ts: imports node:net { connect, isIP } (core is pure)",
    ]);
  });

  it("catches an import from a higher layer, or across gateway and supervisor", () => {
    const cases: [string, string, string][] = [
      [
        "core/phases.ts",
        `import { Store } from "../gateway/store.js";`,
        "core/phases.ts: imports ../gateway/store.js (gateway)",
      ],
      [
        "transport/unix.ts",
        `import "../runtime/contract.js";`,
        "transport/unix.ts: imports ../runtime/contract.js (runtime)",
      ],
      [
        "supervisor/pod.ts",
        `import type { Store } from "../gateway/store.js";`,
        "supervisor/pod.ts: imports ../gateway/store.js (gateway)",
      ],
      [
        "gateway/runtime.ts",
        `import { startPod } from "../supervisor/pod.js";`,
        "gateway/runtime.ts: imports ../supervisor/pod.js (supervisor)",
      ],
      [
        "supervisor/agent/main.ts",
        `import { startPod } from "../pod.js";`,
        "supervisor/agent/main.ts: imports ../pod.js (supervisor)",
      ],
      ["gateway/server.ts", `import("../cli/cli.js");`, "gateway/server.ts: imports ../cli/cli.js (cli)"],
    ];
    for (const [file, line, expected] of cases) {
      const withViolation = new Map(tree);
      withViolation.set(file, `${line}\n${tree.get(file)}`);
      expect(layeringViolations(withViolation, layers)).toEqual([expected]);
    }
  });

  it("catches a deep import into a dependency outside the patches module", () => {
    const deep = `import { CompressionFilter } from "@grpc/grpc-js/build/src/compression-filter.js";\n`;
    const withViolation = new Map(tree);
    withViolation.set("transport/frames.ts", deep + tree.get("transport/frames.ts"));
    expect(layeringViolations(withViolation, layers)).toEqual([
      "transport/frames.ts: reaches into @grpc/grpc-js/build/src/compression-filter.js (only host/patches.ts may)",
    ]);
    withViolation.set("transport/frames.ts", tree.get("transport/frames.ts")!);
    withViolation.set(PATCHES_MODULE, deep);
    expect(layeringViolations(withViolation, layers)).toEqual([]);
  });
});

// The CLI is the API's face: its commands reach the gateway and the
// sandboxes through src/api/, never over gRPC or SSH themselves.
const CLI_WIRE = /^(@grpc\/grpc-js|ssh2)(\/|$)|\/transport\/(grpc|ssh)\.js$/;

function cliWireImports(files: ReadonlyMap<string, string>): string[] {
  const found = new Set<string>();
  for (const [file, text] of files) {
    if (!within(file, "cli")) continue;
    if (importsOf(file, text).some(({ specifier }) => CLI_WIRE.test(specifier))) found.add(file);
  }
  return [...found].sort();
}

describe("the CLI on the API", () => {
  it("talks gRPC or SSH itself in no command", () => {
    expect(cliWireImports(tree)).toEqual([]);
  });

  it("catches a command that talks gRPC or SSH itself", () => {
    const withWire = new Map(tree);
    withWire.set(
      "cli/actions/sandbox.ts",
      `import { Client } from "ssh2";\n${tree.get("cli/actions/sandbox.ts")}`,
    );
    expect(cliWireImports(withWire)).toContain("cli/actions/sandbox.ts");
  });
});
