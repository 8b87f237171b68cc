// The `openshell` program: the root command and its global options, each
// command added from its own module under commands/, and the one place that
// turns what a command line did into output on stderr and an exit code.
// Everything about one command line lives in its `Invocation`, so command
// lines can be run in-process, side by side, and their exit codes come back
// to the caller instead of ending the process.

import { Command, CommanderError, type CommandUnknownOpts } from "@commander-js/extra-typings";
import { isOpenShellError, messageOf, OpenShellError, PASSTHROUGH_EXIT } from "../core/errors.js";
import { escapeForTerminal } from "../core/terminal-text.js";
import { VERSION } from "../host/version.js";
import { addCompletions } from "./commands/completions.js";
import { addGatewayCommands } from "./commands/gateway.js";
import { addImage } from "./commands/image.js";
import { addLogs } from "./commands/logs.js";
import { addPolicy } from "./commands/policy.js";
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
import { addSandboxWait } from "./commands/sandbox-wait.js";
import { addSshProxy } from "./commands/ssh-proxy.js";
import { addStatus } from "./commands/status.js";
import { addWhoami } from "./commands/whoami.js";
import type { CommandContext } from "./context.js";
import { createAttaches, examples } from "./flags.js";
import type { GlobalOptions } from "./gateways.js";
import { colorFor, type Io } from "./output/ui.js";

/** What a command's action is given: a way to run its body with a context. */
export interface Runner {
  /** Runs `body` with this command line's context; its result is the exit code. */
  run(body: (ctx: CommandContext) => Promise<number>): Promise<void>;
}

/** The top-level help's summary of README "Exit codes". */
const EXIT_CODES_HELP = `
Exit codes:
  0    success
  1    the CLI failed: bad input, gateway unreachable, not authorized, not found, sandbox in Error
  2    usage error (unknown flag, missing argument)
  130  interrupted by Ctrl-C; 143: ended by SIGTERM
  sandbox exec, sandbox connect, sandbox wait and an attached sandbox create exit with the
  remote command's status (128+N for signal N, 124 for --timeout); their own failures use:
  240  bad input or usage      241  no gateway, or unreachable
  243  sandbox not found, not Ready, or in Error
  244  connection lost, or the command not started (wait: not completed) within --timeout
  245  any other internal error
  A gateway refusing the caller's credentials is 1 from every command.`;

function buildProgram(
  io: Io,
  run: (globals: GlobalOptions, body: (ctx: CommandContext) => Promise<number>) => Promise<void>,
  parsing: (command: CommandUnknownOpts) => void,
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
    .exitOverride()
    .addHelpText(
      "after",
      `${examples(
        "openshell sandbox create --name demo -- python3 -m http.server 8000",
        "openshell sandbox exec -n demo -- ls -la",
        "openshell logs demo --tail",
      )}
${EXIT_CODES_HELP}`,
    );
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
    .enablePositionalOptions()
    .addHelpText(
      "after",
      examples(
        "openshell sandbox create --name demo -- sleep infinity",
        "openshell sandbox list",
        "openshell sb exec -n demo -- id",
      ),
    );
  addSandboxCreate(sandbox, runner);
  addSandboxGet(sandbox, runner);
  addSandboxList(sandbox, runner);
  addSandboxDelete(sandbox, runner);
  addSandboxStop(sandbox, runner);
  addSandboxStart(sandbox, runner);
  addSandboxRenew(sandbox, runner);
  addSandboxWait(sandbox, runner);
  addSandboxExec(sandbox, runner);
  addSandboxConnect(sandbox, runner);
  addSandboxUpload(sandbox, runner);
  addSandboxDownload(sandbox, runner);
  addSandboxSshConfig(sandbox, runner);
  // Which command is being parsed: its parse errors take its exit codes.
  sandbox.hook("preSubcommand", (_sandbox, command) => parsing(command));

  addLogs(program, runner);
  addImage(program, runner);
  addPolicy(program, runner);

  const gateway = program
    .command("gateway")
    .alias("gw")
    .description("start, stop and choose gateways")
    .addHelpText(
      "after",
      examples("openshell gateway start", "openshell gateway status", "openshell gateway list"),
    );
  addGatewayCommands(gateway, runner);

  addStatus(program, runner);
  // Where a user of `gateway start` and `gateway stop` looks for it too.
  addStatus(gateway, runner);
  addSshProxy(program, runner);
  addWhoami(program, runner);
  addCompletions(program, runner);
  return program;
}

/** One command line: its streams, its environment, and what it has done so far. */
export class Invocation {
  private context: CommandContext | undefined;
  private code: number | undefined;
  /** The sandbox subcommand being parsed, once commander has chosen it. */
  private parsing: CommandUnknownOpts | undefined;

  constructor(
    readonly io: Io,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  /** The exit code so far (a command that has not finished has none yet). */
  get exitCode(): number | undefined {
    return this.code;
  }

  /**
   * Ctrl-C (130) or SIGTERM (143): asks the running command to wind down; a
   * command that then fails exits with `status`. False when none is running
   * or it was asked already.
   */
  cancel(status = 130): boolean {
    if (this.context === undefined || this.context.signal.aborted) return false;
    this.context.cancel(status);
    return true;
  }

  /** Parses and runs `args` (the words after `openshell`); resolves to the exit code. */
  async run(args: string[]): Promise<number> {
    const program = buildProgram(
      this.io,
      async (globals, body) => {
        const { CommandContext } = await import("./context.js");
        this.context = new CommandContext(this.io, this.env, globals);
        this.code = await body(this.context);
      },
      (command) => {
        this.parsing = command;
      },
    );
    try {
      await program.parseAsync(args, { from: "user" });
    } catch (error) {
      this.code = this.failure(error);
      // A command cut short by Ctrl-C or SIGTERM exits as a shell reports it.
      if (this.context?.interruptStatus !== undefined && !(error instanceof CommanderError)) {
        this.code = this.context.interruptStatus;
      }
    }
    this.context?.close();
    this.code ??= 0;
    return this.code;
  }

  /**
   * Whether failures take the pass-through codes: as the running command
   * decided, or, for a parse error, for exec and connect always and for a
   * create that would attach, judged by the flags parsed before the error.
   */
  private get passthrough(): boolean {
    if (this.context) return this.context.passthrough;
    const name = this.parsing?.name();
    if (name === "exec" || name === "connect" || name === "wait") return true;
    const terminal = this.io.stdin.isTTY === true && this.io.stdout.isTTY === true;
    return name === "create" && createAttaches(this.parsing!.opts(), terminal);
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
    const color = colorFor(this.io.stderr, this.env);
    // The last gate before the terminal: a message may quote a sandbox or a
    // remote gateway, and each is one line.
    this.io.stderr.write(`${color.red("error:")} ${escapeForTerminal(error.message)}\n`);
    if (error.hint) this.io.stderr.write(`${color.dim(`hint: ${escapeForTerminal(error.hint)}`)}\n`);
  }
}
