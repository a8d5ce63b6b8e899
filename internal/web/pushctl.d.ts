// Type declarations of pushctl.js, the browser client of a pushctl broker,
// served as /pushctl.js (global `pushctl`) and /pushctl.mjs (ES module).

export type Transport = "websocket" | "sse" | "longpoll";

export interface ConnectOptions {
  /** A token, or a function returning one (or a promise of one); the
   * function is called again when the broker says the token expired. */
  token?: string | (() => string | Promise<string>);
  /** Transports in the order to try (default all three). */
  transports?: Transport[];
  /** Reconnect backoff bounds in milliseconds (defaults 250 and 15000). */
  minBackoff?: number;
  maxBackoff?: number;
  /** Consecutive failures of a transport that worked before the client
   * falls back to the next one (default 3; before any success, 1). */
  failuresBeforeFallback?: number;
  /** How long one long-poll waits (default "25s"). */
  pollTimeout?: string;
  /** false: the broker does not send this client's own publishes back to
   * it (over WebSocket; over SSE and long-poll they still come). */
  echo?: boolean;
  /** true: send the site's cookies to a broker on another origin of the
   * site too (SSE, long-poll and HTTP publishes; WebSocket always sends
   * them), for a broker whose connect hook reads the session cookie. The
   * broker must list the page's origin in --allowed-origins. */
  withCredentials?: boolean;
}

export interface Message<T = unknown> {
  channel: string;
  /** "<epoch>-<seq>", unique within the channel. */
  id: string;
  seq: number;
  event: string;
  /** JSON data as a value, text as a string, binary as a Uint8Array. */
  data: T;
  time: string;
}

export interface Gap {
  channel: string;
  /** The last position the client had. */
  from: string;
  /** The stream continues after this position. */
  to: string;
}

export interface Ack {
  channel: string;
  id: string;
  seq: number;
  subscribers: number;
  /** true when the broker had stored this publish already (it was sent
   * again after its connection was lost before the ack): id and seq are
   * the stored message's, and nothing was delivered a second time. */
  duplicate?: boolean;
}

export type State = "connecting" | "connected" | "reconnecting" | "fallback" | "disconnected";

export interface StateChange {
  state: State;
  transport: Transport | "";
  attempt?: number;
  /** Milliseconds until the next attempt. */
  delay?: number;
  /** Why the connection ended: an error code (docs/errors.md) or "network". */
  reason?: string;
  error?: PushctlError;
  from?: Transport;
  to?: Transport;
}

export class PushctlError extends Error {
  /** A stable code, listed in docs/errors.md. */
  code: string;
  status: number;
}

export class Channel {
  readonly name: string;
  readonly pattern: boolean;
  subscribed: boolean;
  bind<T = unknown>(event: string, fn: (data: T, message: Message<T>) => void): this;
  bindAll(fn: (event: string, data: unknown, message: Message) => void): this;
  unbind(event?: string, fn?: (...args: any[]) => void): this;
  unbindAll(fn?: (...args: any[]) => void): this;
  publish(event: string, data: unknown): Promise<Ack>;
  unsubscribe(): void;
  on(event: "gap", fn: (gap: Gap) => void): this;
  on(event: "error", fn: (err: PushctlError) => void): this;
  off(event: string, fn?: (...args: any[]) => void): this;
}

export interface ConsumeOptions {
  /** The channel or pattern of a consumer that does not exist yet. */
  channel?: string;
  /** How many deliveries are handled at once (default 1: in order). */
  max?: number;
  /** For a new consumer: how long a delivery may go unanswered ("30s"). */
  ack_wait?: string;
  max_deliveries?: number;
  /** "new" (default), "all", or a message id or time. */
  start?: string;
}

export interface Delivery<T = unknown> extends Message<T> {
  /** The delivery's id, acked or refused for you. */
  delivery: string;
  /** How many times the message has been delivered, this time included. */
  deliveries: number;
}

export class Consumer {
  readonly name: string;
  consuming: boolean;
  /** Ends the consuming; deliveries being handled are still answered.
   * Resolves once the broker stopped pushing (or the connection is gone). */
  stop(): Promise<void>;
  on(event: "gap", fn: (gap: Gap & { lost: number }) => void): this;
  on(event: "error", fn: (err: PushctlError) => void): this;
  off(event: string, fn?: (...args: any[]) => void): this;
}

export class Client {
  readonly url: string;
  state: State;
  transport: Transport | "";
  subscribe(name: string): Channel;
  unsubscribe(name: string): void;
  channel(name: string): Channel | undefined;
  publish(channel: string, event: string, data: unknown): Promise<Ack>;
  /** Reads a durable consumer over WebSocket: the delivery is acked when
   * handler returns (or resolves), refused when it throws (or rejects;
   * an error's `delay`, such as "10s", says when it comes again). */
  consume<T = unknown>(name: string, options: ConsumeOptions, handler: (data: T, delivery: Delivery<T>) => unknown): Consumer;
  close(): void;
  on(event: "state", fn: (s: StateChange) => void): this;
  on(event: "connecting" | "connected" | "reconnecting" | "disconnected", fn: (s: StateChange) => void): this;
  on(event: "fallback", fn: (s: { from: Transport; to: Transport; reason: string }) => void): this;
  on(event: "message", fn: (m: Message) => void): this;
  on(event: "gap", fn: (g: Gap) => void): this;
  off(event: string, fn?: (...args: any[]) => void): this;
}

/** Does the channel name match the pattern ("news.*", "news.>")? */
export function matches(pattern: string, name: string): boolean;

export function connect(url?: string, options?: ConnectOptions): Client;

declare const pushctl: {
  connect: typeof connect;
  Client: typeof Client;
  Channel: typeof Channel;
  PushctlError: typeof PushctlError;
  matches: typeof matches;
  version: string;
};
export default pushctl;
