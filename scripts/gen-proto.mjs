// Regenerates src/gen/ from proto/ with buf and ts-proto. The output is
// committed, so a fresh `npm install` needs neither tool to run.
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const template = {
  version: "v2",
  plugins: [
    {
      local: join(root, "node_modules/.bin/protoc-gen-ts_proto"),
      out: "src/gen",
      opt: [
        "outputServices=grpc-js",
        "esModuleInterop=true",
        "env=node",
        "forceLong=number",
        "oneof=unions-value",
        "importSuffix=.js",
        "useOptionals=messages",
        "outputTypeRegistry=false",
        "useDate=false",
        "unknownFields=false",
      ],
    },
  ],
};
const templatePath = join(root, "node_modules/.cache/buf.gen.json");
execFileSync("mkdir", ["-p", dirname(templatePath)]);
writeFileSync(templatePath, JSON.stringify(template));
rmSync(join(root, "src/gen"), { recursive: true, force: true });
execFileSync(join(root, "node_modules/.bin/buf"), ["generate", "proto", "--template", templatePath], {
  cwd: root,
  stdio: "inherit",
});
