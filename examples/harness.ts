// A minimal agent harness on the openshell API: a sandbox with a file and a
// policy, commands with their output streamed, an upload and a download, and
// the sandbox deleted when the scope ends, however it ends.
//
//   npm install openshell && npx tsc && node harness.js
//
// It talks to the gateway the `openshell` CLI would (the active one, or
// OPENSHELL_GATEWAY / OPENSHELL_GATEWAY_ENDPOINT).

import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OpenShell, TimeoutError } from "openshell";

const client = await OpenShell.connect();
const work = mkdtempSync(join(tmpdir(), "harness-"));
mkdirSync(join(work, "project"));
writeFileSync(join(work, "project", "main.py"), "print('hello from the project')\n");

try {
  await using sandbox = await client.create({
    labels: { harness: "example" },
    files: [{ path: "/etc/harness/task.txt", content: "summarize the project\n" }],
    // No network at all; the workspace readable and writable.
    policy: {
      version: 1,
      filesystem_policy: {
        include_workdir: true,
        read_only: ["/usr", "/bin", "/lib", "/etc", "/proc"],
        read_write: ["/tmp", "/dev/null"],
      },
    },
    onProgress: (event) => console.error(`[create] ${event.message}`),
  });
  console.log(`sandbox ${sandbox.name} is ${sandbox.phase}`);

  const task = await sandbox.readFile("/etc/harness/task.txt");
  console.log(`task: ${task.toString().trim()}`);

  await sandbox.upload(join(work, "project"), "/sandbox/project");
  const run = await sandbox.exec("ls /sandbox/project && cat /sandbox/project/main.py", {
    onStdout: (text) => process.stdout.write(`  | ${text}`),
  });
  console.log(`exit status ${run.exitCode}`);

  // A failing command is a result, not an exception.
  const failed = await sandbox.exec("exit 3");
  console.log(`exit status ${failed.exitCode}`);

  // A command that runs too long is ended in the sandbox.
  await sandbox.exec("sleep 60", { timeoutMs: 500 }).catch((error: unknown) => {
    if (!(error instanceof TimeoutError)) throw error;
    console.log("timed out as asked");
  });

  await sandbox.writeFile("/sandbox/project/REPORT.md", "# Report\nall good\n");
  const back = await sandbox.download("/sandbox/project", join(work, "out"));
  console.log(
    `downloaded ${back.files} files; report: ${readFileSync(join(back.path, "REPORT.md"), "utf8").split("\n")[1]}`,
  );
} finally {
  client.close();
}
console.log("done");
