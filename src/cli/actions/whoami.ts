// `whoami`: the caller as the gateway identified it (GetCurrentUser).

import type { CommandContext } from "../context.js";
import { type OutputFormat, printDocument } from "../output/present.js";

export async function whoami(ctx: CommandContext, options: { output: OutputFormat }): Promise<number> {
  const api = await ctx.api();
  const user = await api.whoami({ signal: ctx.signal });
  if (options.output !== "table") {
    printDocument(ctx.ui, options.output, {
      subject: user.subject,
      display_name: user.displayName || null,
      roles: user.roles,
      scopes: user.scopes,
      identity_provider: user.identityProvider,
    });
    return 0;
  }
  const { ui } = ctx;
  const label = (text: string): string => ui.out.dim(text);
  ui.data(ui.out.cyan.bold("Current User"));
  ui.data("");
  ui.data(`  ${label("Subject:")} ${user.subject}`);
  if (user.displayName) ui.data(`  ${label("Name:")} ${user.displayName}`);
  ui.data(`  ${label("Provider:")} ${user.identityProvider}`);
  ui.data(`  ${label("Roles:")} ${user.roles.join(", ")}`);
  ui.data(`  ${label("Scopes:")} ${user.scopes.join(", ")}`);
  return 0;
}
