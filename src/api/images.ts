// The gateway's image store through the API (`openshell image ...`): what it
// holds, pulling, removing, pruning. Extension calls of our gateway
// (proto/EXTENSIONS.md); an OpenShell gateway answers them UNIMPLEMENTED.

import type { ImageInfo } from "../gen/openshell.js";
import type { Link } from "./link.js";

export type { ImageInfo };

/** How long a call that may pull an image waits: a large one takes minutes. */
export const PULL_DEADLINE_MS = 30 * 60_000;
const CALL_DEADLINE_MS = 60_000;

export async function listImages(link: Link, options: { signal?: AbortSignal } = {}): Promise<ImageInfo[]> {
  const { client, target } = await link.grpc();
  const { images } = await link.call(
    target,
    client.listImages.bind(client),
    {},
    { deadlineMs: CALL_DEADLINE_MS, ...options },
  );
  return images;
}

export async function pullImage(
  link: Link,
  source: string,
  options: { signal?: AbortSignal } = {},
): Promise<ImageInfo> {
  const { client, target } = await link.grpc();
  return link.call(
    target,
    client.pullImage.bind(client),
    { source },
    { deadlineMs: PULL_DEADLINE_MS, ...options },
  );
}

export async function removeImage(
  link: Link,
  image: string,
  options: { signal?: AbortSignal } = {},
): Promise<string> {
  const { client, target } = await link.grpc();
  const { digest } = await link.call(
    target,
    client.removeImage.bind(client),
    { image },
    { deadlineMs: CALL_DEADLINE_MS, ...options },
  );
  return digest;
}

export async function pruneImages(
  link: Link,
  options: { signal?: AbortSignal } = {},
): Promise<{ digests: string[]; freedBytes: number }> {
  const { client, target } = await link.grpc();
  return link.call(target, client.pruneImages.bind(client), {}, { deadlineMs: CALL_DEADLINE_MS, ...options });
}
