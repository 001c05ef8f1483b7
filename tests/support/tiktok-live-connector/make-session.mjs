// A session saved by TikTok-Live-Connector 2.x, made offline by the library itself (no network, no TikTok).
//
// Usage: node make-session.mjs OUT.jsonl
//
// What a user's program does while connected: `connection.on(WebcastEvent.GIFT, (data) =>
// out.write(JSON.stringify(data) + "\n"))`. Here every step between TikTok's bytes and that line is the library's:
//   1. gift (and one chat) messages are encoded to protobuf bytes with the library's own generated encoders
//      (tiktok-live-proto/v3, re-exported by tiktok-live-connector: WebcastGiftMessage.encode, ...), wrapped in a
//      ProtoMessageFetchResult inside a WebcastPushFrame (createBaseWebcastPushFrame), the first frame gzipped as
//      TikTok sends them;
//   2. each frame goes through the websocket client's own message handler, WebcastWebSocketClient.prototype
//      .onMessage (deserializeWebSocketMessage: unzip, ProtoMessageFetchResult.decode, deserializeMessage per
//      message by its method), called on a stand-in for the socket (a real WebcastWebSocketClient is a `ws`
//      WebSocket and dials TikTok in its constructor);
//   3. its "protoMessageFetchResult" event goes to a real TikTokLiveConnection's processProtoMessageFetchResult,
//      as setupWebsocket wires it, which emits "gift" (processDecodedData) and "chat";
//   4. the listeners write JSON.stringify(data), one per line: the saved session.
// It prints {"lines": N, "gifts": G} to stdout.
import { EventEmitter } from "node:events";
import { writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

import {
  BaseProtoMessage,
  CommonMessageData,
  Gift,
  GiftMonitorInfo,
  ProtoMessageFetchResult,
  TikTokLiveConnection,
  User,
  WebcastChatMessage,
  WebcastEvent,
  WebcastGiftMessage,
  WebcastWebSocketClient,
  createBaseWebcastPushFrame,
} from "tiktok-live-connector";

const out = process.argv[2];
if (!out) {
  console.error("usage: node make-session.mjs OUT.jsonl");
  process.exit(2);
}

// The generated messages have encode/decode only (no create/fromPartial): decoding no bytes gives a message with
// every field at its proto3 default, which the encoder needs (it compares each field with its default).
const make = (type, fields) => Object.assign(type.decode(new Uint8Array(0)), fields);

// Every id is above 2**53 (a JS number would round it); the library carries int64 as decimal strings.
const ROOM = "7301234567890123457";
const HOST = "7101234567890123459";
const COHOST = "7101234567890123461";
const SENDERS = ["6901234567890123401", "6901234567890123403", "6901234567890123405", "6901234567890123407",
  "6901234567890123409", "6901234567890123411"];
const T0 = 1767225600000; // 2026-01-01T00:00:00Z, epoch ms

let seq = 0;
function giftMessage({ sender, giftId, type, coins, name, repeatCount, repeatEnd, groupId, toUser, anchor = HOST }) {
  seq += 1;
  const msgId = (7309000000000000001n + BigInt(seq)).toString();
  return make(WebcastGiftMessage, {
    common: make(CommonMessageData, {
      method: "WebcastGiftMessage", msgId, roomId: ROOM, createTime: String(T0 + seq * 1000),
    }),
    giftId: String(giftId),
    repeatCount,
    repeatEnd,
    groupId,
    user: make(User, { id: sender, nickname: `viewer-${sender.slice(-2)}` }),
    toUser: toUser === undefined ? undefined : make(User, { id: toUser, nickname: `creator-${toUser.slice(-2)}` }),
    gift: make(Gift, { id: String(giftId), type, diamondCount: coins, name }),
    monitorInfo: anchor === null ? undefined : make(GiftMonitorInfo, { anchorId: anchor, toUserId: toUser ?? "0" }),
  });
}

const ROSE = { giftId: 5655, type: 1, coins: 1, name: "Rose" };
const HEART = { giftId: 5487, type: 1, coins: 5, name: "Finger Heart" };
const UNIVERSE = { giftId: 7312, type: 2, coins: 44999, name: "TikTok Universe" };
const GALAXY = { giftId: 11046, type: 2, coins: 1000, name: "Galaxy" };
const CONCERT = { giftId: 7934, type: 2, coins: 500, name: "Concert" };

// 1. a streak with its final event: Rose x5 to the host (repeat counts 1, 2, 5; the last has repeatEnd 1)
const streak = ["7308000000000000001", [1, 2, 5]];
const s1 = streak[1].map((n, i) => giftMessage({ ...ROSE, sender: SENDERS[0], repeatCount: n,
  repeatEnd: i === streak[1].length - 1 ? 1 : 0, groupId: streak[0], toUser: HOST }));
// 2. a streak whose final event never came: Finger Heart 1, 2, 3 (no repeatEnd)
const s2 = [1, 2, 3].map((n) => giftMessage({ ...HEART, sender: SENDERS[1], repeatCount: n, repeatEnd: 0,
  groupId: "7308000000000000003", toUser: HOST }));
// 3. a non-streakable expensive gift, once
const universe = giftMessage({ ...UNIVERSE, sender: SENDERS[2], repeatCount: 1, repeatEnd: 0, groupId: "0",
  toUser: HOST });
// 4. a gift to a co-host (multi-guest LIVE: toUser is the co-host, the room's anchor is the host)
const cohost = giftMessage({ ...GALAXY, sender: SENDERS[3], repeatCount: 1, repeatEnd: 0, groupId: "0",
  toUser: COHOST });
// 6. a gift that names no receiving user (no toUser): the room's anchor (monitorInfo.anchorId) is the creator
const noReceiver = giftMessage({ ...CONCERT, sender: SENDERS[4], repeatCount: 1, repeatEnd: 0, groupId: "0",
  toUser: undefined });
// 7. a gift that names neither a receiving user nor the room's anchor: cannot be credited to anyone
const nobody = giftMessage({ ...CONCERT, sender: SENDERS[5], repeatCount: 1, repeatEnd: 0, groupId: "0",
  toUser: undefined, anchor: null });
// a chat message in the same session (the user saves chat events to the same file)
const chat = make(WebcastChatMessage, {
  common: make(CommonMessageData, { method: "WebcastChatMessage", msgId: "7309100000000000001", roomId: ROOM,
    createTime: String(T0 + 500) }),
  user: make(User, { id: SENDERS[0] }),
  content: "hello",
});

const payload = (type, message) => ({ method: type === WebcastGiftMessage ? "WebcastGiftMessage" : "WebcastChatMessage",
  payload: Buffer.from(type.encode(message).finish()), msgId: message.common.msgId });
const gift = (m) => payload(WebcastGiftMessage, m);

// Frames as TikTok pushes them; 5. the co-host's gift is pushed again in a later frame (same msgId: a resend).
const frames = [
  [payload(WebcastChatMessage, chat), gift(s1[0]), gift(s2[0]), gift(s1[1])],
  [gift(s2[1]), gift(universe), gift(s1[2]), gift(cohost)],
  [gift(s2[2]), gift(cohost), gift(noReceiver), gift(nobody)],
];

const connection = new TikTokLiveConnection("giftstream_fixture", {});
const lines = [];
let gifts = 0;
connection.on(WebcastEvent.GIFT, (data) => { gifts += 1; lines.push(JSON.stringify(data)); });
connection.on(WebcastEvent.CHAT, (data) => lines.push(JSON.stringify(data)));
connection.on("error", (e) => { throw e.exception; });

const socket = new EventEmitter(); // stands in for WebcastWebSocketClient (a ws WebSocket) in onMessage
socket.sendAck = () => {};
const processing = [];
socket.on("protoMessageFetchResult", (result) => processing.push(connection.processProtoMessageFetchResult(result)));
socket.on("messageDecodingFailed", (e) => { throw e; });

for (const [i, messages] of frames.entries()) {
  const fetchResult = Buffer.from(ProtoMessageFetchResult.encode(make(ProtoMessageFetchResult, {
    messages: messages.map((m) => make(BaseProtoMessage, m)),
    cursor: String(i + 1), needAck: false,
  })).finish());
  const frame = createBaseWebcastPushFrame({ payloadEncoding: "pb", payloadType: "msg",
    payload: i === 0 ? gzipSync(fetchResult) : fetchResult });
  await WebcastWebSocketClient.prototype.onMessage.call(socket, Buffer.from(frame.finish()));
  // Frames are seconds apart on a live socket: each one's events are out before the next arrives. (Pushed back to
  // back, the connection would interleave them: processProtoMessageFetchResult awaits between messages.)
  await Promise.all(processing.splice(0));
}

writeFileSync(out, lines.map((l) => l + "\n").join(""));
console.log(JSON.stringify({ lines: lines.length, gifts }));
