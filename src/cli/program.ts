// The `openshell` program: the root command and its global options, each
// command added from its own module under commands/, and the one place that
// turns what a command line did into output on stderr and an exit code.
// Everything about one command line lives in its `Invocation`, so command
// lines can be run in-process, side by side, and their exit codes come back
// to the caller instead of ending the process.

import { Command, CommanderError } from "@commander-js/extra-typings";
import { isOpenShellError, messageOf, OpenShellError, PASSTHROUGH_EXIT } from "../core/errors.js";
import { escapeForTerminal } from "../core/terminal-text.js";
import { VERSION } from "../host/version.js";
import { addGatewayCommands } from "./commands/gateway.js";
import { addLogs } from "./commands/logs.js";
import { addSandboxConnect } from "./commands/sandbox-connect.js";
import { addSandboxCreate } from "./commands/sandbox-create.js";
import { addSandboxDelete } from "./commands/sandbox-delete.js";
import { addSandboxDownload } from "./commands/sandbox-download.js";
import { addSandboxExec } from "./commands/sandbox-exec.js";
import { addSandboxGet } from "./commands/sandbox-get.js";
import { addSandboxList } from "./commands/sandbox-list.js";
import { addSandboxRenew } from "./commands/sandbox-renew.js";
import { addSandboxSshConfig } from "./commands/sandbox-ssh-config.js";
import { addSandboxStart } from "./commands/sandbox-start.js";
import { addSandboxStop } from "./commands/sandbox-stop.js";
import { addSandboxUpload } from "./commands/sandbox-upload.js";
import { addSshProxy } from "./commands/ssh-proxy.js";
import { addStatus } from "./commands/status.js";
import type { CommandContext } from "./context.js";
import type { GlobalOptions } from "./gateways.js";
import type { Io } from "./output/ui.js";

/** What a command's action is given: a way to run its body with a context. */
export interface Runner {
  /** Runs `body` with this command line's context; its result is the exit code. */
  run(body: (ctx: CommandContext) => Promise<number>): Promise<void>;
}

function buildProgram(
  io: Io,
  run: (globals: GlobalOptions, body: (ctx: CommandContext) => Promise<number>) => Promise<void>,
) {
  const program = new Command("openshell")
    .description(
      "Create sandboxes, run commands in them, move files in and out — on a local or remote gateway.",
    )
    .version(VERSION, "-V, --version")
    .option("-g, --gateway <name>", "gateway to use (env OPENSHELL_GATEWAY)")
    .option(
      "--gateway-endpoint <url>",
      "gateway URL, bypassing stored metadata (env OPENSHELL_GATEWAY_ENDPOINT)",
    )
    .option("--gateway-insecure", "skip TLS certificate verification (env OPENSHELL_GATEWAY_INSECURE)")
    .option("--workspace <name>", "workspace (env OPENSHELL_WORKSPACE)")
    .option("-v, --verbose", "more diagnostics", (_v: string, previous: number) => previous + 1, 0)
    .showHelpAfterError("(add --help for usage)")
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
      outputError: (text, write) => write(text),
      getOutHelpWidth: () => io.stdout.columns ?? 80,
    })
    .exitOverride();
  const runner: Runner = {
    run: (body) => {
      const { gateway, gatewayEndpoint, gatewayInsecure, workspace } = program.opts();
      return run({ gateway, gatewayEndpoint, gatewayInsecure, workspace }, body);
    },
  };

  const sandbox = program
    .command("sandbox")
    .alias("sb")
    .description("create and use sandboxes")
    .enablePositionalOptions();
  addSandboxCreate(sandbox, runner);
  addSandboxGet(sandbox, runner);
  addSandboxList(sandbox, runner);
  addSandboxDelete(sandbox, runner);
  addSandboxStop(sandbox, runner);
  addSandboxStart(sandbox, runner);
  addSandboxRenew(sandbox, runner);
  addSandboxExec(sandbox, runner);
  addSandboxConnect(sandbox, runner);
  addSandboxUpload(sandbox, runner);
  addSandboxDownload(sandbox, runner);
  addSandboxSshConfig(sandbox, runner);

  addLogs(program, runner);

  const gateway = program.command("gateway").alias("gw").description("start, stop and choose gateways");
  addGatewayCommands(gateway, runner);

  addStatus(program, runner);
  addSshProxy(program, runner);
  return program;
}

/** One command line: its streams, its environment, and what it has done so far. */
export class Invocation {
  private context: CommandContext | undefined;
  private code: number | undefined;

  constructor(
    readonly io: Io,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  /** The exit code so far (a command that has not finished has none yet). */
  get exitCode(): number | undefined {
    return this.code;
  }

  /** Ctrl-C: asks the running command to wind down; false when none is running or it was asked already. */
  cancel(): boolean {
    if (this.context === undefined || this.context.signal.aborted) return false;
    this.context.cancel();
    return true;
  }

  /** Parses and runs `args` (the words after `openshell`); resolves to the exit code. */
  async run(args: string[]): Promise<number> {
    const program = buildProgram(this.io, async (globals, body) => {
      const { CommandContext } = await import("./context.js");
      this.context = new CommandContext(this.io, this.env, globals);
      this.code = await body(this.context);
    });
    try {
      await program.parseAsync(args, { from: "user" });
    } catch (error) {
      this.code = this.failure(error);
    }
    this.context?.close();
    this.code ??= 0;
    return this.code;
  }

  private get passthrough(): boolean {
    return this.context?.passthrough === true;
  }

  private failure(error: unknown): number {
    if (error instanceof CommanderError) {
      if (
        error.code === "commander.helpDisplayed" ||
        error.code === "commander.version" ||
        error.code === "commander.help"
      ) {
        return 0;
      }
      return this.passthrough ? PASSTHROUGH_EXIT.usage : 2;
    }
    if (isOpenShellError(error)) {
      this.printError(error);
      return this.passthrough ? PASSTHROUGH_EXIT[error.code] : error.exitCode;
    }
    this.printError(new OpenShellError("internal", messageOf(error)));
    if (this.env.OPENSHELL_DEBUG && error instanceof Error) this.io.stderr.write(`${error.stack ?? ""}\n`);
    return this.passthrough ? PASSTHROUGH_EXIT.internal : 1;
  }

  private printError(error: OpenShellError): void {
    const color = this.io.stderr.isTTY === true && this.env.NO_COLOR === undefined;
    const red = (s: string): string => (color ? `\x1b[31m${s}\x1b[39m` : s);
    const dim = (s: string): string => (color ? `\x1b[2m${s}\x1b[22m` : s);
    // The last gate before the terminal: a message may quote a sandbox or a
    // remote gateway, and each is one line.
    this.io.stderr.write(`${red("error:")} ${escapeForTerminal(error.message)}\n`);
    if (error.hint) this.io.stderr.write(`${dim(`hint: ${escapeForTerminal(error.hint)}`)}\n`);
  }
}
