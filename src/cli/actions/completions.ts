// Shell completion through @bomb.sh/tab: the scripts are its own, and it
// parses the words on each TAB; this module describes our program to it
// (commands, options, choices) and adds the names it cannot know: sandboxes
// from the active gateway, gateways from the local configuration.

import type { RootCommand, Command as TabCommand } from "@bomb.sh/tab";
import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { validateSandboxName } from "../../core/names.js";
import { listGatewayNames } from "../../host/config.js";
import type { CommandContext } from "../context.js";

/** How long a TAB waits for the gateway's sandbox names before completing without them. */
const NAMES_TIMEOUT_MS = 2000;
/** The most sandbox names offered. */
const NAMES_MAX = 500;

export async function completionScript(ctx: CommandContext, shell: string): Promise<number> {
  const { script } = await import("@bomb.sh/tab");
  printed(ctx, () => script(shell, "openshell", "openshell"));
  return 0;
}

/** Answers one TAB: `words` are the command line after `openshell`, the last one being completed. */
export async function complete(
  ctx: CommandContext,
  program: CommandUnknownOpts,
  words: string[],
): Promise<number> {
  const { RootCommand } = await import("@bomb.sh/tab");
  const root = new RootCommand();
  const sandboxes = words.length > 1 ? await sandboxNames(ctx) : [];
  const gateways = listGatewayNames();
  describe(root, program, "", { sandboxes, gateways });
  printed(ctx, () => root.parse([...words]));
  return 0;
}

interface Names {
  sandboxes: string[];
  gateways: string[];
}

/** Adds `command` and everything under it to `root`, under `path` ("" for the program itself). */
function describe(root: RootCommand, command: CommandUnknownOpts, path: string, names: Names): void {
  const help = command.createHelp();
  const target: TabCommand = path === "" ? root : root.command(path, command.description());
  const gatewayCommand = ["gateway", "gw"].includes(path.split(" ")[0] ?? "");
  for (const option of help.visibleOptions(command)) {
    const long = option.long?.replace(/^--/, "");
    if (!long) continue;
    const short = option.short?.replace(/^-/, "");
    const values = option.argChoices
      ? option.argChoices
      : long === "gateway"
        ? names.gateways
        : long === "name" && (/^(sandbox|sb) exec$/.test(path) || path === "ssh-proxy")
          ? names.sandboxes
          : long === "name" && gatewayCommand && path.endsWith(" stop")
            ? names.gateways
            : undefined;
    if (option.required || option.optional) {
      target.option(
        long,
        option.description,
        (offer) => {
          for (const value of values ?? []) offer(value, "");
        },
        short,
      );
    } else if (short) {
      target.option(long, option.description, short);
    } else {
      target.option(long, option.description);
    }
  }
  for (const argument of command.registeredArguments) {
    const values = argument.argChoices
      ? argument.argChoices
      : argument.name() === "name" || argument.name() === "names"
        ? gatewayCommand
          ? names.gateways
          : names.sandboxes
        : undefined;
    target.argument(
      argument.name(),
      values
        ? (offer) => {
            for (const value of values) offer(value, "");
          }
        : undefined,
      argument.variadic,
    );
  }
  for (const sub of help.visibleCommands(command)) {
    if (sub.name() === "help") continue;
    // `sb` completes as `sandbox` does.
    for (const name of [sub.name(), ...sub.aliases()]) {
      describe(root, sub as CommandUnknownOpts, path === "" ? name : `${path} ${name}`, names);
    }
  }
}

/** The active gateway's sandbox names, or none when it does not answer in time; never starts a gateway. */
async function sandboxNames(ctx: CommandContext): Promise<string[]> {
  const names: string[] = [];
  try {
    const api = await ctx.api({ autoStart: false });
    for await (const sandbox of api.list({
      signal: AbortSignal.any([ctx.signal, AbortSignal.timeout(NAMES_TIMEOUT_MS)]),
    })) {
      // A gateway's words go to the shell as completions: only a valid name can.
      const name = sandbox.metadata?.name;
      if (name && validateSandboxName(name) === undefined) names.push(name);
      if (names.length >= NAMES_MAX) break;
    }
  } catch {
    // No gateway, not reachable, or not in time: complete without sandbox names.
  }
  return names;
}

/** Runs `body`, which prints with console.log (as the completion library does), onto the command's stdout. */
function printed(ctx: CommandContext, body: () => void): void {
  const log = console.log;
  console.log = (...parts: unknown[]) => {
    ctx.io.stdout.write(`${parts.join(" ")}\n`);
  };
  try {
    body();
  } finally {
    console.log = log;
  }
}
