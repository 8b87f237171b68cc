// The `openshell` program: argument parsing with commander, and the one place
// that prints errors and chooses the exit code. Each command's code is
// loaded only when that command runs, so `sandbox exec` starts fast.

import { Command, CommanderError, Option } from "commander";
import { isOpenShellError, messageOf, OpenShellError, PASSTHROUGH_EXIT } from "../core/errors.js";
import { escapeForTerminal } from "../core/terminal-text.js";
import { VERSION } from "../host/version.js";
import type { CommandContext } from "./commands/context.js";
import type { GlobalOptions } from "./commands/gateways.js";

/** Set by commands whose exit status is a remote command's (exec, connect, attached create). */
let passthrough = false;
let activeContext: CommandContext | undefined;

export function markPassthrough(): void {
  passthrough = true;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function integer(flag: string) {
  return (value: string): number => {
    if (!/^-?\d+$/.test(value.trim())) {
      throw new OpenShellError("usage", `${flag} ${value}: expected a whole number`);
    }
    return Number(value);
  };
}

const outputOption = (): Option =>
  new Option("-o, --output <format>", "output format").choices(["table", "json", "yaml"]).default("table");

async function context(program: Command): Promise<CommandContext> {
  const { CommandContext } = await import("./commands/context.js");
  const { processIo } = await import("./commands/ui.js");
  const globals = program.opts<GlobalOptions>();
  activeContext = new CommandContext(processIo(), globals);
  return activeContext;
}

function run(program: Command, action: (ctx: CommandContext, ...args: never[]) => Promise<number>) {
  return async (...args: unknown[]): Promise<void> => {
    const ctx = await context(program);
    process.exitCode = await (action as (ctx: CommandContext, ...rest: unknown[]) => Promise<number>)(
      ctx,
      ...args,
    );
  };
}

export function buildProgram(): Command {
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
    .option("--workspace <name>", "workspace (env OPENSHELL_WORKSPACE)", undefined)
    .option("-v, --verbose", "more diagnostics", (_v: string, previous: number) => previous + 1, 0)
    .showHelpAfterError("(add --help for usage)")
    .configureOutput({ outputError: (text, write) => write(text) })
    .exitOverride();

  // ---- sandbox ---------------------------------------------------------
  const sandbox = program
    .command("sandbox")
    .alias("sb")
    .description("create and use sandboxes")
    .enablePositionalOptions();

  sandbox
    .command("create")
    .description("create a sandbox, wait until it is Ready, optionally run a command in it")
    .option("--name <name>", "sandbox name (lowercase letters, digits, hyphens; at most 19)")
    .option("--label <key=value>", "label (repeatable)", collect, [])
    .option(
      "--env <key=value>",
      "environment variable for every process in the sandbox (repeatable)",
      collect,
      [],
    )
    .option(
      "--file <local:remote[:mode]>",
      "inject a read-only file at create time, e.g. ./cfg.yaml:/etc/app/cfg.yaml:0444 (repeatable)",
      collect,
      [],
    )
    .option("--upload <local[:dest]>", "upload a file or directory once Ready (repeatable)", collect, [])
    .option("--no-git-ignore", "with --upload: include files that .gitignore excludes")
    .option("--policy <file>", "sandbox policy YAML (env OPENSHELL_SANDBOX_POLICY)")
    .option("--detach", "return once Ready; do not attach to the command")
    .option("--attach", "attach to the command even when not on a terminal")
    .option("--no-keep", "delete the sandbox when the attached command ends")
    .option("--tty", "run the command on a pseudo-terminal")
    .option("--no-tty", "run the command without a pseudo-terminal")
    .addOption(outputOption())
    .argument("[command...]", "command to run as the sandbox's main process (after --)")
    .passThroughOptions()
    .addHelpText(
      "after",
      `
Examples:
  openshell sandbox create --name demo -- sh -c 'id -u; sleep infinity'
  openshell sandbox create --file ./SOUL.md:/sandbox/.agent/SOUL.md --upload ./src -- python main.py
  openshell sandbox create --no-keep --policy ./policy.yaml -- make test`,
    )
    .action(
      run(program, async (ctx, command: string[], opts: Record<string, unknown>) => {
        const { sandboxCreate } = await import("./commands/create.js");
        return sandboxCreate(ctx, {
          name: opts.name as string | undefined,
          labels: opts.label as string[],
          env: opts.env as string[],
          files: opts.file as string[],
          uploads: opts.upload as string[],
          gitIgnore: opts.gitIgnore !== false,
          policy: opts.policy as string | undefined,
          detach: opts.detach === true,
          attach: opts.attach === true,
          keep: opts.keep !== false,
          tty: opts.tty as boolean | undefined,
          output: opts.output as "table" | "json" | "yaml",
          command,
          markPassthrough,
        });
      }),
    );

  sandbox
    .command("get")
    .description("show one sandbox (defaults to the last used)")
    .argument("[name]")
    .option("--policy-only", "print only the effective policy, as YAML that --policy accepts")
    .addOption(outputOption())
    .action(
      run(program, async (ctx, name: string | undefined, opts: Record<string, unknown>) => {
        const { sandboxGet } = await import("./commands/sandbox.js");
        return sandboxGet(ctx, {
          name,
          output: opts.output as "table" | "json" | "yaml",
          policyOnly: opts.policyOnly === true,
        });
      }),
    );

  sandbox
    .command("list")
    .alias("ls")
    .description("list sandboxes")
    .option("--limit <n>", "at most this many (1-1000)", integer("--limit"), 100)
    .option("--offset <n>", "skip this many", integer("--offset"), 0)
    .option("--selector <k=v,...>", "only sandboxes with these labels")
    .option("--ids", "print only ids")
    .option("--names", "print only names")
    .addOption(outputOption())
    .action(
      run(program, async (ctx, opts: Record<string, unknown>) => {
        const { sandboxList } = await import("./commands/sandbox.js");
        return sandboxList(ctx, {
          limit: opts.limit as number,
          offset: opts.offset as number,
          selector: opts.selector as string | undefined,
          ids: opts.ids === true,
          names: opts.names === true,
          output: opts.output as "table" | "json" | "yaml",
        });
      }),
    );

  sandbox
    .command("delete")
    .alias("rm")
    .description("delete sandboxes and everything in them")
    .argument("[names...]")
    .option("--all", "delete every sandbox in the workspace")
    .action(
      run(program, async (ctx, names: string[], opts: Record<string, unknown>) => {
        const { sandboxDelete } = await import("./commands/sandbox.js");
        return sandboxDelete(ctx, { names, all: opts.all === true });
      }),
    );

  sandbox
    .command("exec")
    .description("run a command in a sandbox; exits with its status")
    .option("-n, --name <name>", "sandbox (defaults to the last used)")
    .option("--workdir <path>", "working directory inside the sandbox")
    .option("--env <key=value>", "environment variable (repeatable)", collect, [])
    .option(
      "--timeout <seconds>",
      "kill the command after this long and exit 124 (0 = never)",
      integer("--timeout"),
      0,
    )
    .option("--tty", "allocate a pseudo-terminal")
    .option("--no-tty", "never allocate a pseudo-terminal")
    .argument("<command...>", "command and arguments (after --)")
    .passThroughOptions()
    .addHelpText(
      "after",
      `
Examples:
  openshell sandbox exec -n demo -- ls -la
  tar c src | openshell sandbox exec -- tar x -C /sandbox
  openshell sandbox exec --timeout 60 --env DEBUG=1 -- make test`,
    )
    .action(
      run(program, async (ctx, command: string[], opts: Record<string, unknown>) => {
        markPassthrough();
        const { sandboxExec } = await import("./commands/exec.js");
        return sandboxExec(ctx, {
          name: opts.name as string | undefined,
          workdir: opts.workdir as string | undefined,
          env: opts.env as string[],
          timeout: opts.timeout as number,
          tty: opts.tty as boolean | undefined,
          command,
        });
      }),
    );

  sandbox
    .command("connect")
    .description("open an interactive shell in a sandbox")
    .argument("[name]")
    .action(
      run(program, async (ctx, name: string | undefined) => {
        markPassthrough();
        const { sandboxConnect } = await import("./commands/connect.js");
        return sandboxConnect(ctx, { name });
      }),
    );

  sandbox
    .command("upload")
    .description("copy a local file or directory into a sandbox")
    .argument("<name>")
    .argument("<local>")
    .argument("[dest]", "destination in the sandbox (default: its working directory)")
    .option("--no-git-ignore", "include files that .gitignore excludes")
    .action(
      run(
        program,
        async (ctx, name: string, local: string, dest: string | undefined, opts: Record<string, unknown>) => {
          const { sandboxUpload } = await import("./commands/transfer.js");
          return sandboxUpload(ctx, { name, local, dest, gitIgnore: opts.gitIgnore !== false });
        },
      ),
    );

  sandbox
    .command("download")
    .description("copy a file or directory out of a sandbox's working directory")
    .argument("<name>")
    .argument("<path>")
    .argument("[dest]", "local destination", ".")
    .action(
      run(program, async (ctx, name: string, path: string, dest: string) => {
        const { sandboxDownload } = await import("./commands/transfer.js");
        return sandboxDownload(ctx, { name, path, dest });
      }),
    );

  sandbox
    .command("ssh-config")
    .description("print an OpenSSH Host block for ssh, scp, sftp and editors")
    .argument("[name]")
    .addHelpText(
      "after",
      "\nExample:\n  ssh -F <(openshell sandbox ssh-config demo) openshell-demo.default 'uname -a'",
    )
    .action(
      run(program, async (ctx, name: string | undefined) => {
        const { sandboxSshConfig } = await import("./commands/connect.js");
        return sandboxSshConfig(ctx, { name });
      }),
    );

  // ---- logs ------------------------------------------------------------
  program
    .command("logs")
    .alias("lg")
    .description("show a sandbox's log lines (its main process output and gateway notes)")
    .argument("[name]")
    .option("-n, --lines <n>", "how many lines", integer("-n"), 200)
    .option("--tail", "keep following new lines")
    .option("--since <duration>", "only lines newer than this (30s, 5m, 1h)")
    .option("--source <source>", "gateway, sandbox or all (repeatable)", collect, [])
    .option("--level <level>", "minimum level: error, warn, info, debug, trace")
    .option("--raw", "print only each line's message, exactly as sent (control characters included)")
    .action(
      run(program, async (ctx, name: string | undefined, opts: Record<string, unknown>) => {
        const { logs } = await import("./commands/logs.js");
        return logs(ctx, {
          name,
          lines: opts.lines as number,
          tail: opts.tail === true,
          since: opts.since as string | undefined,
          source: opts.source as string[],
          level: opts.level as string | undefined,
          raw: opts.raw === true,
        });
      }),
    );

  // ---- gateway ---------------------------------------------------------
  const gateway = program.command("gateway").alias("gw").description("start, stop and choose gateways");
  gateway
    .command("start")
    .description("start the local gateway in the background (idempotent) and make it active")
    .option("--name <name>", "gateway name", "local")
    .option("--bind <address>", "address to listen on (default: as last started, else 127.0.0.1)")
    .option(
      "--port <port>",
      "port, 0 picks a free one (default: as last started, else 17670)",
      integer("--port"),
    )
    .option("--tls", "serve TLS with a generated CA and certificate (required for a non-loopback --bind)")
    .option("--no-tls", "serve plaintext (loopback only), dropping TLS settings of an earlier start")
    .option("--tls-cert <file>", "serve TLS with this certificate (PEM; with --tls-key)")
    .option("--tls-key <file>", "private key (PEM) of --tls-cert")
    .option("--client-ca <file>", "require client certificates signed by this CA (mTLS)")
    .option(
      "--ssh-session-ttl <seconds>",
      "lifetime of SSH session tokens (default 86400, 24 h)",
      integer("--ssh-session-ttl"),
    )
    .option(
      "--log-max-size <MiB>",
      "rotate a sandbox's log file at this size (default 10)",
      integer("--log-max-size"),
    )
    .option(
      "--log-max-files <count>",
      "log files kept per sandbox, the current one included (default 2)",
      integer("--log-max-files"),
    )
    .option("--foreground", "run in this process (for service managers)")
    .addHelpText(
      "after",
      `
Settings are kept: a later \`gateway start\` or auto-start reuses them.

Examples:
  openshell gateway start
  openshell gateway start --bind 0.0.0.0 --port 17670 --tls
  openshell gateway start --bind 0.0.0.0 --tls-cert gw.crt --tls-key gw.key --client-ca clients-ca.crt`,
    )
    .action(
      run(program, async (ctx, opts: Record<string, unknown>) => {
        const { gatewayStart } = await import("./commands/gateway.js");
        return gatewayStart(ctx, {
          name: opts.name as string,
          bind: opts.bind as string | undefined,
          port: opts.port as number | undefined,
          foreground: opts.foreground === true,
          tls: opts.tls as boolean | undefined,
          tlsCert: opts.tlsCert as string | undefined,
          tlsKey: opts.tlsKey as string | undefined,
          clientCa: opts.clientCa as string | undefined,
          sshSessionTtl: opts.sshSessionTtl as number | undefined,
          logMaxSize: opts.logMaxSize as number | undefined,
          logMaxFiles: opts.logMaxFiles as number | undefined,
        });
      }),
    );
  gateway
    .command("stop")
    .description("stop a local gateway and its sandboxes (they run again on the next start)")
    .option("--name <name>", "gateway name (default: the active one)")
    .action(
      run(program, async (ctx, opts: Record<string, unknown>) => {
        const { gatewayStop } = await import("./commands/gateway.js");
        return gatewayStop(ctx, { name: opts.name as string | undefined });
      }),
    );
  gateway
    .command("list")
    .description("list known gateways")
    .addOption(outputOption())
    .action(
      run(program, async (ctx, opts: Record<string, unknown>) => {
        const { gatewayList } = await import("./commands/gateway.js");
        return gatewayList(ctx, { output: opts.output as "table" | "json" | "yaml" });
      }),
    );
  gateway
    .command("select")
    .description("make a gateway the active one")
    .argument("[name]")
    .action(
      run(program, async (ctx, name: string | undefined) => {
        const { gatewaySelect } = await import("./commands/gateway.js");
        return gatewaySelect(ctx, { name });
      }),
    );
  gateway
    .command("add")
    .description("register a gateway by its endpoint and make it active")
    .argument("<endpoint>", "http://HOST:PORT or https://HOST:PORT")
    .option("--name <name>", "name to register it under")
    .option("--ca <file>", "CA certificate (PEM) that signed the gateway's certificate")
    .option("--token-file <file>", "file holding the gateway's bearer token")
    .option("--client-cert <file>", "client certificate (PEM) for mTLS")
    .option("--client-key <file>", "client key (PEM) for mTLS")
    .addHelpText(
      "after",
      `
Examples:
  openshell gateway add http://127.0.0.1:17670 --name other --token-file ./token
  openshell gateway add https://gw.example.com:17670 --ca ca.crt --token-file token
  openshell gateway add https://10.0.0.5:17670 --ca ca.crt --token-file token --client-cert me.crt --client-key me.key`,
    )
    .action(
      run(program, async (ctx, endpoint: string, opts: Record<string, unknown>) => {
        const { gatewayAdd } = await import("./commands/gateway.js");
        return gatewayAdd(ctx, {
          endpoint,
          name: opts.name as string | undefined,
          ca: opts.ca as string | undefined,
          tokenFile: opts.tokenFile as string | undefined,
          clientCert: opts.clientCert as string | undefined,
          clientKey: opts.clientKey as string | undefined,
        });
      }),
    );
  gateway
    .command("remove")
    .description("forget a registered gateway")
    .argument("<name>")
    .action(
      run(program, async (ctx, name: string) => {
        const { gatewayRemove } = await import("./commands/gateway.js");
        return gatewayRemove(ctx, { name });
      }),
    );

  program
    .command("status")
    .description("show whether the active gateway is reachable and accepts our credentials")
    .addOption(outputOption())
    .action(
      run(program, async (ctx, opts: Record<string, unknown>) => {
        const { status } = await import("./commands/gateway.js");
        return status(ctx, { output: opts.output as "table" | "json" | "yaml" });
      }),
    );

  program
    .command("ssh-proxy", { hidden: true })
    .description("OpenSSH ProxyCommand: bridges stdin/stdout to a sandbox's SSH server")
    .option("--gateway-name <name>")
    .option("--name <sandbox>")
    .option("--sandbox-id <id>")
    .option("--token <token>")
    .option("--server <url>", "gateway endpoint, instead of the one recorded for --gateway-name")
    .action(
      run(program, async (ctx, opts: Record<string, unknown>) => {
        const { sshProxy } = await import("./commands/connect.js");
        return sshProxy(ctx, {
          gatewayName: opts.gatewayName as string | undefined,
          name: opts.name as string | undefined,
          sandboxId: opts.sandboxId as string | undefined,
          token: opts.token as string | undefined,
          server: opts.server as string | undefined,
        });
      }),
    );

  return program;
}

function printError(error: OpenShellError): void {
  const color = process.stderr.isTTY === true && process.env.NO_COLOR === undefined;
  const red = (s: string): string => (color ? `\x1b[31m${s}\x1b[39m` : s);
  const dim = (s: string): string => (color ? `\x1b[2m${s}\x1b[22m` : s);
  // The last gate before the terminal: a message may quote a sandbox or a
  // remote gateway, and each is one line.
  process.stderr.write(`${red("error:")} ${escapeForTerminal(error.message)}\n`);
  if (error.hint) process.stderr.write(`${dim(`hint: ${escapeForTerminal(error.hint)}`)}\n`);
}

function exitCodeFor(error: OpenShellError): number {
  return passthrough ? PASSTHROUGH_EXIT[error.code] : error.exitCode;
}

/** Waits until stdout and stderr have handed everything to the OS. */
function flushed(): Promise<void> {
  const drain = (stream: NodeJS.WriteStream): Promise<void> =>
    new Promise((resolve) => (stream.writableLength === 0 ? resolve() : stream.write("", () => resolve())));
  return Promise.all([drain(process.stdout), drain(process.stderr)]).then(() => undefined);
}

export async function main(argv: string[]): Promise<never> {
  const program = buildProgram();
  process.on("SIGINT", () => {
    if (activeContext && !activeContext.signal.aborted) activeContext.cancel();
    else process.exit(130);
  });
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(process.exitCode ?? 0);
  });
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      if (
        error.code === "commander.helpDisplayed" ||
        error.code === "commander.version" ||
        error.code === "commander.help"
      ) {
        process.exitCode = 0;
      } else {
        process.exitCode = passthrough ? PASSTHROUGH_EXIT.usage : 2;
      }
    } else if (isOpenShellError(error)) {
      printError(error);
      process.exitCode = exitCodeFor(error);
    } else {
      printError(new OpenShellError("internal", messageOf(error)));
      if (process.env.OPENSHELL_DEBUG) process.stderr.write(`${(error as Error).stack ?? ""}\n`);
      process.exitCode = passthrough ? PASSTHROUGH_EXIT.internal : 1;
    }
  }
  activeContext?.close();
  await flushed();
  process.exit(process.exitCode ?? 0);
}

void main(process.argv);
