// Makes the supervisor bundle: one self-contained folder that runs the
// supervisor on a machine, or in a container image, that has neither node nor
// glibc (a static busybox image, say). `node scripts/bundle.mjs OUT` (or
// `npm run bundle -- OUT`) builds it from dist/ and this machine's node:
//
//   bin/openshell-supervisor  starts the supervisor from the environment alone (POSIX sh)
//   bin/openshell-install     copies the bundle into a folder (the init container's command)
//   bin/node                  this machine's node
//   bin/bwrap, bin/setpriv,   bubblewrap, and the util-linux programs that start it (an image's
//   bin/unshare, bin/mount    busybox ones lack options), each through the bundle's loader (libexec/)
//   libexec/tar, realpath     GNU tar and coreutils' realpath, bound into pods for uploads and downloads
//   lib/                      the dynamic loader and the shared libraries all of these link
//   lib/seccomp/              the default seccomp filter, compiled here (it depends on no policy)
//   dist/                     the supervisor's and the agent's code
//   node_modules/             the packages they load at run time (node-pty, ssh2 and theirs)
//   bundle.json               what the supervisor reads to find the above
//
// Programs run through the bundle's own loader (`lib/ld-*.so* --library-path
// lib PROGRAM`), so the image's C library, if any, is never used. A gateway
// with an extra deny list (OPENSHELL_SECCOMP_DENY) needs a filter the bundle
// does not have: its supervisors compile it, with python3-seccomp where they
// run, or stop the sandbox with SeccompUnavailable.

import { execFileSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
/**
 * What the supervisor runs to start a pod besides node: bubblewrap, and as
 * root the util-linux programs that drop to the pod's uid and expose its
 * directories (busybox's setpriv has no --reuid).
 */
const POD_TOOLS = ["bwrap", "setpriv", "unshare", "mount"];
/** What uploads and downloads run in the sandbox, bound into its pod: an image's own may not be GNU's. */
const TRANSFER_TOOLS = ["tar", "realpath"];
/** The packages the supervisor and the agent load from node_modules (esbuild leaves them external). */
const RUNTIME_PACKAGES = ["node-pty", "ssh2"];
/** What a package's copy leaves out: sources, other platforms' prebuilt binaries, build leftovers. */
const SKIPPED_DIRS = new Set([
  "deps",
  "third_party",
  "prebuilds",
  "src",
  "test",
  "obj.target",
  ".deps",
  "docs",
]);
const SKIPPED_FILES = /\.(a|o|cc|c|h|gyp|gypi|md|map|ts|mk)$|^Makefile$|^binding\.gyp$/;

function fail(message) {
  process.stderr.write(`bundle: ${message}\n`);
  process.exit(1);
}

const out = process.argv[2] ? resolve(process.argv[2]) : undefined;
if (!out) fail("usage: node scripts/bundle.mjs OUT (the folder to make)");
if (existsSync(out) && readdirSync(out).length > 0 && !existsSync(join(out, "bundle.json"))) {
  fail(`${out} exists and is not a supervisor bundle; name an empty or new folder`);
}
if (!existsSync(join(root, "dist", "supervisor.mjs"))) fail("dist/ is not built; run `npm run build` first");

/**
 * The supervisor's own code for what the bundle needs of it: the seccomp
 * filter's rules and compiler, and its reading of ldd.
 */
const compiled = join(tmpdir(), `openshell-bundle-${process.pid}.mjs`);
await build({
  absWorkingDir: root,
  stdin: {
    contents: [
      'export { seccompProgram, seccompSpec } from "./src/supervisor/seccomp.ts";',
      'export { parseLdd } from "./src/supervisor/pod.ts";',
    ].join("\n"),
    resolveDir: root,
    loader: "ts",
  },
  outfile: compiled,
  bundle: true,
  format: "esm",
  platform: "node",
  target: "node20",
  external: ["better-sqlite3", "node-pty", "ssh2", "cpu-features"],
  banner: {
    js: "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);",
  },
  logLevel: "warning",
});
const supervisor = await import(pathToFileURL(compiled).href).finally(() =>
  rmSync(compiled, { force: true }),
);

/** The libraries and loader ldd lists for `program`. */
function linked(program) {
  try {
    return supervisor.parseLdd(execFileSync("ldd", [program], { encoding: "utf8" }));
  } catch (error) {
    return fail(`cannot list the libraries of ${program} with ldd: ${error.message}`);
  }
}

/** Where `name` is on PATH. */
function which(name) {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(":")) {
    if (existsSync(join(dir, name))) return join(dir, name);
  }
  return fail(`${name} is not installed here (apt-get install bubblewrap util-linux mount)`);
}

/** The package and everything it requires at run time that is installed, by directory. */
function packageClosure(names) {
  const found = new Map();
  const visit = (name, from) => {
    let manifestPath;
    try {
      manifestPath = createRequire(join(from, "noop.js")).resolve(`${name}/package.json`);
    } catch {
      return; // an optional dependency this install does not have
    }
    const dir = dirname(manifestPath);
    if (found.has(dir)) return;
    found.set(dir, name);
    const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
    for (const dependency of Object.keys({ ...manifest.dependencies, ...manifest.optionalDependencies })) {
      visit(dependency, dir);
    }
  };
  for (const name of names) visit(name, root);
  return found;
}

const staging = `${out}.making-${process.pid}`;
rmSync(staging, { recursive: true, force: true });
for (const dir of ["bin", "libexec", "lib/seccomp", "dist/chunks", "node_modules"]) {
  mkdirSync(join(staging, dir), { recursive: true });
}

// node, the pod's starters and the transfer tools, each with its libraries, all in lib/ beside one loader.
const node = linked(process.execPath);
const tools = POD_TOOLS.map((name) => ({ name, path: which(name) }));
const loader = `lib/${basename(node.loader)}`;
copyFileSync(node.loader, join(staging, loader));
const libraries = new Set(node.libraries);
for (const tool of tools) {
  for (const library of linked(tool.path).libraries) libraries.add(library);
  copyFileSync(tool.path, join(staging, "libexec", tool.name));
}
const transfer = {};
for (const name of TRANSFER_TOOLS) {
  const path = which(name);
  const linkedTo = linked(path).libraries;
  for (const library of linkedTo) libraries.add(library);
  copyFileSync(path, join(staging, "libexec", name));
  transfer[name] = {
    path: `libexec/${name}`,
    libraries: linkedTo.map((library) => `lib/${basename(library)}`),
  };
}
for (const library of libraries) copyFileSync(library, join(staging, "lib", basename(library)));
copyFileSync(process.execPath, join(staging, "bin", "node"));

// Our code: the supervisor, the agent and the chunks they share; no maps, no declarations.
for (const file of ["supervisor.mjs", "agent.mjs"])
  copyFileSync(join(root, "dist", file), join(staging, "dist", file));
for (const file of readdirSync(join(root, "dist", "chunks")).filter((name) => name.endsWith(".mjs"))) {
  copyFileSync(join(root, "dist", "chunks", file), join(staging, "dist", "chunks", file));
}
for (const [dir] of packageClosure(RUNTIME_PACKAGES)) {
  const relative = dir.slice(join(root, "node_modules").length + 1);
  cpSync(dir, join(staging, "node_modules", relative), {
    recursive: true,
    dereference: true,
    filter: (source) => {
      const name = basename(source);
      // node_modules nested in a package are copied as packages of the closure, if needed.
      if (source !== dir && (name === "node_modules" || SKIPPED_DIRS.has(name))) return false;
      return !SKIPPED_FILES.test(name);
    },
  });
}

// The default seccomp filter, compiled by the supervisor's own code.
try {
  await supervisor.seccompProgram(join(staging, "lib", "seccomp"), supervisor.seccompSpec());
} catch (error) {
  fail(`cannot compile the seccomp filter: ${error.message}`);
}

const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const manifest = {
  version,
  arch: process.arch,
  node: "bin/node",
  loader,
  libraries: node.libraries.map((library) => `lib/${basename(library)}`),
  seccomp: "lib/seccomp",
  tools: "bin",
  transfer,
};
writeFileSync(join(staging, "bundle.json"), `${JSON.stringify(manifest, null, 2)}\n`);

/** A POSIX sh script of the bundle's bin/, finding the bundle's root from its own path. */
function script(name, purpose, body) {
  const text = [
    "#!/bin/sh",
    ...purpose.map((line) => `# ${line}`),
    // biome-ignore lint/suspicious/noTemplateCurlyInString: sh's parameter expansion, not a template
    "case $0 in */*) bin=${0%/*} ;; *) bin=. ;; esac",
    'root=$(cd "$bin/.." && pwd) || exit 1',
    ...body,
    "",
  ].join("\n");
  writeFileSync(join(staging, "bin", name), text);
  chmodSync(join(staging, "bin", name), 0o755);
}
const run = (program) => `exec "$root/${loader}" --library-path "$root/lib" "$root/${program}"`;
script(
  "openshell-supervisor",
  [
    "Starts the openshell supervisor from this bundle, configured by its environment alone",
    "(OPENSHELL_SANDBOX_ID, OPENSHELL_ENDPOINT, OPENSHELL_SANDBOX_SECRET, OPENSHELL_TLS_CA).",
  ],
  [`${run("bin/node")} "$root/dist/supervisor.mjs" "$@"`],
);
for (const tool of tools) {
  script(
    tool.name,
    [`${tool.path}, through the bundle's loader and libraries.`],
    [`${run(`libexec/${tool.name}`)} "$@"`],
  );
}
script(
  "openshell-install",
  [
    "Copies this bundle into TARGET (the init container's command: openshell-install /opt/openshell).",
    "Exit status 2 for a usage error, 1 when TARGET cannot take it.",
  ],
  [
    'if [ "$#" -ne 1 ] || [ -z "$1" ]; then',
    '  echo "usage: openshell-install TARGET (a folder, e.g. /opt/openshell)" >&2',
    "  exit 2",
    "fi",
    "target=$1",
    'if [ -e "$target" ] && [ ! -d "$target" ]; then',
    '  echo "openshell-install: $target is not a folder; name a folder to install into" >&2',
    "  exit 1",
    "fi",
    'if [ -d "$target" ] && [ -n "$(ls -A "$target")" ] && [ ! -f "$target/bundle.json" ]; then',
    '  echo "openshell-install: $target holds other files; name an empty folder or an earlier install" >&2',
    "  exit 1",
    "fi",
    'mkdir -p "$target" && cp -a "$root/." "$target/" && chmod 755 "$target" || {',
    '  echo "openshell-install: could not copy the bundle into $target" >&2',
    "  exit 1",
    "}",
    'echo "openshell-install: supervisor bundle installed in $target"',
  ],
);

rmSync(out, { recursive: true, force: true });
cpSync(staging, out, { recursive: true, verbatimSymlinks: true });
rmSync(staging, { recursive: true, force: true });
const bytes = execFileSync("du", ["-sb", out], { encoding: "utf8" }).split("\t")[0];
process.stdout.write(`bundle: ${out} (${(Number(bytes) / 1024 / 1024).toFixed(1)} MiB)\n`);
