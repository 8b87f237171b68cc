// `openshell gateway start|stop|list|select|add|remove`: the gateways this CLI
// knows, and the local one it runs.

import type { CommandUnknownOpts } from "@commander-js/extra-typings";
import { examples, integer, outputOption } from "../flags.js";
import type { Runner } from "../program.js";

export function addGatewayCommands(gateway: CommandUnknownOpts, runner: Runner): void {
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
    .option(
      "--driver <driver>",
      "what runs sandboxes: local (bubblewrap on this host, the default) or kubernetes (a pod per sandbox)",
    )
    .option("--kubeconfig <file>", "with --driver kubernetes: the kubeconfig (default: as kubectl finds it)")
    .option(
      "--kube-context <name>",
      "with --driver kubernetes: the kubeconfig's context (default: its current one)",
    )
    .option(
      "--kube-namespace <name>",
      "with --driver kubernetes: the namespace of sandboxes' pods (default: the context's, else default)",
    )
    .option("--foreground", "run in this process (for service managers)")
    .addHelpText(
      "after",
      `
Settings are kept: a later \`gateway start\` or auto-start reuses them.

Examples:
  openshell gateway start
  openshell gateway start --bind 0.0.0.0 --port 17670 --tls
  openshell gateway start --bind 0.0.0.0 --tls-cert gw.crt --tls-key gw.key --client-ca clients-ca.crt
  openshell gateway start --driver kubernetes --kube-context kind-openshell --bind 0.0.0.0 --tls`,
    )
    .action((opts) =>
      runner.run(async (ctx) => {
        const { gatewayStart } = await import("../actions/gateway.js");
        return gatewayStart(ctx, {
          name: opts.name,
          bind: opts.bind,
          port: opts.port,
          foreground: opts.foreground === true,
          tls: opts.tls,
          tlsCert: opts.tlsCert,
          tlsKey: opts.tlsKey,
          clientCa: opts.clientCa,
          sshSessionTtl: opts.sshSessionTtl,
          logMaxSize: opts.logMaxSize,
          logMaxFiles: opts.logMaxFiles,
          driver: opts.driver,
          kubeconfig: opts.kubeconfig,
          kubeContext: opts.kubeContext,
          kubeNamespace: opts.kubeNamespace,
        });
      }),
    );

  gateway
    .command("stop")
    .description("stop a local gateway; its sandboxes keep running, and its next start takes them on")
    .option("--name <name>", "gateway name (default: the active one)")
    .addHelpText("after", examples("openshell gateway stop", "openshell gateway stop --name other"))
    .action((opts) =>
      runner.run(async (ctx) => {
        const { gatewayStop } = await import("../actions/gateway.js");
        return gatewayStop(ctx, { name: opts.name });
      }),
    );

  gateway
    .command("list")
    .description("list known gateways")
    .addOption(outputOption())
    .addHelpText("after", examples("openshell gateway list", "openshell gateway list -o json"))
    .action((opts) =>
      runner.run(async (ctx) => {
        const { gatewayList } = await import("../actions/gateway.js");
        return gatewayList(ctx, { output: opts.output });
      }),
    );

  gateway
    .command("select")
    .description("make a gateway the active one")
    .argument("[name]")
    .addHelpText(
      "after",
      examples("openshell gateway select local", "openshell gateway select  # show the known ones"),
    )
    .action((name) =>
      runner.run(async (ctx) => {
        const { gatewaySelect } = await import("../actions/gateway.js");
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
    .action((endpoint, opts) =>
      runner.run(async (ctx) => {
        const { gatewayAdd } = await import("../actions/gateway.js");
        return gatewayAdd(ctx, {
          endpoint,
          name: opts.name,
          ca: opts.ca,
          tokenFile: opts.tokenFile,
          clientCert: opts.clientCert,
          clientKey: opts.clientKey,
        });
      }),
    );

  gateway
    .command("remove")
    .description("forget a registered gateway")
    .argument("<name>")
    .addHelpText("after", examples("openshell gateway remove other"))
    .action((name) =>
      runner.run(async (ctx) => {
        const { gatewayRemove } = await import("../actions/gateway.js");
        return gatewayRemove(ctx, { name });
      }),
    );
}
