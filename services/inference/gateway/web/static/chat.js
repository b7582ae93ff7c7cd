// The Flywheel chat page: streamed chat through the gateway, thumbs and rankings sent to the
// feedback service with each answer's feedback token, and a status view. Plain JavaScript,
// no build step. Model text is only ever set as textContent, never parsed as HTML.
"use strict";

const KEY_STORAGE = "flywheel.apiKey"; // sessionStorage: the key lives as long as the tab

// The reason chips offered with a thumb (codes of the feedback API's `reasons` field).
const REASONS = {
  down: [
    ["not_factual", "Not factually correct"],
    ["ignored_instruction", "Didn't follow the instruction"],
    ["too_long", "Too long"],
    ["too_short", "Too short"],
    ["refused", "Refused when it shouldn't have"],
    ["unsafe", "Unsafe or inappropriate"],
    ["other", "Other"],
  ],
  up: [
    ["helpful", "Helpful"],
    ["other", "Other"],
  ],
};

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  feedbackUrl: "", // the page's own origin until /chat/config.json says otherwise
  history: [], // the messages sent with the next request: {role, content}
  conversationId: null,
  controller: null, // AbortController of the request in flight
  lastTurn: null, // {userText, element, historyLength} of the last exchange, for Regenerate
};

const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

// --- errors, in words ------------------------------------------------------------------------

class ApiError extends Error {}

function showNotice(message) {
  const notice = $("#notice");
  notice.textContent = message;
  notice.hidden = false;
}

function clearNotice() {
  $("#notice").hidden = true;
  $("#notice").textContent = "";
}

// An error answer of the gateway ({error: {message, code}}) or the feedback service
// ({error: {code, message}}) as a sentence a user can act on.
async function apiError(response, who) {
  let detail = "";
  try {
    const body = await response.json();
    const error = body.error || {};
    detail = error.message || JSON.stringify(body);
    if (error.code) detail += ` (${error.code})`;
  } catch (_) {
    detail = response.statusText || "no details";
  }
  const status = response.status;
  let advice = "";
  if (status === 401) advice = " Check the API key.";
  if (status === 429) {
    const wait = response.headers.get("Retry-After");
    advice = wait ? ` Try again in ${wait} s.` : " Try again shortly.";
  }
  if (status >= 500) advice = " The service is having trouble; try again shortly.";
  const kind = status === 429 ? "rate limited the request" : `answered ${status}`;
  return new ApiError(`${who} ${kind}: ${detail}.${advice}`);
}

function unreachable(who, error) {
  return new ApiError(`Could not reach ${who} (${error.message}). Is it running?`);
}

// --- the API key -----------------------------------------------------------------------------

function showKeyState() {
  $("#key-state").textContent = state.key ? "Key set for this tab." : "No key yet.";
}

function requireKey() {
  if (!state.key) throw new ApiError("Enter your API key first (it stays in this tab only).");
}

// --- streaming chat --------------------------------------------------------------------------

// POST a streamed chat request; calls onDelta(index, text, version, finishReason) per chunk and
// returns the `flywheel` metadata of the last chunk (response ids, feedback token, conversation
// id).
async function streamChat(body, onDelta, signal) {
  requireKey();
  let response;
  try {
    response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.key}` },
      body: JSON.stringify({ ...body, stream: true }),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw unreachable("the gateway", error);
  }
  if (!response.ok) throw await apiError(response, "The gateway");

  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let metadata = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return metadata;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          throw new ApiError(`The model failed while answering: ${chunk.error.message}.`);
        }
        if (chunk.flywheel) metadata = chunk.flywheel;
        for (const choice of chunk.choices || []) {
          const text = (choice.delta && choice.delta.content) || "";
          onDelta(choice.index, text, chunk.system_fingerprint, choice.finish_reason);
        }
      }
    }
  }
  if (!metadata) throw new ApiError("The answer ended early: the connection was closed.");
  return metadata;
}

// --- feedback --------------------------------------------------------------------------------

function clientEventId() {
  // Works outside secure contexts too (crypto.randomUUID does not), e.g. plain http in a cluster.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "page-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sendFeedback(body, feedbackToken) {
  let response;
  try {
    response = await fetch(`${state.feedbackUrl}/v1/feedback`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Feedback-Token": feedbackToken },
      body: JSON.stringify({ ...body, client_event_id: clientEventId() }),
    });
  } catch (error) {
    throw unreachable("the feedback service", error);
  }
  if (!response.ok) throw await apiError(response, "The feedback service");
  return response.json();
}

async function submitting(button, stateLabel, work) {
  button.disabled = true;
  stateLabel.textContent = "Sending…";
  try {
    await work();
    clearNotice();
    stateLabel.textContent = "Recorded. Thank you!";
    return true;
  } catch (error) {
    showNotice(error.message);
    stateLabel.textContent = "Not recorded (see the message above).";
    button.disabled = false;
    return false;
  }
}

// Thumbs with reason chips and a comment, under one answer.
function wireThumbs(turn, responseId, feedbackToken) {
  const reasons = $(".reasons", turn);
  const chips = $(".chips", reasons);
  const stateLabel = $(".feedback-state", turn);
  let direction = null;

  for (const button of turn.querySelectorAll(".thumb")) {
    button.disabled = false;
    button.addEventListener("click", () => {
      direction = button.classList.contains("up") ? "up" : "down";
      for (const other of turn.querySelectorAll(".thumb")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      chips.replaceChildren(
        ...REASONS[direction].map(([code, label]) => {
          const chip = element("button", { type: "button", class: "chip", "aria-pressed": "false" }, label);
          chip.dataset.reason = code;
          chip.addEventListener("click", () =>
            chip.setAttribute("aria-pressed", String(chip.getAttribute("aria-pressed") !== "true")),
          );
          return chip;
        }),
      );
      reasons.hidden = false;
      $(".send-feedback", reasons).disabled = false;
      stateLabel.textContent = "";
      chips.firstChild.focus();
    });
  }

  $(".send-feedback", reasons).addEventListener("click", async (event) => {
    const chosen = [...chips.querySelectorAll('.chip[aria-pressed="true"]')].map((c) => c.dataset.reason);
    const comment = $(".comment", reasons).value.trim();
    const body = { kind: "thumb", response_id: responseId, value: direction };
    if (chosen.length) body.reasons = chosen;
    if (comment) body.comment = comment;
    await submitting(event.currentTarget, stateLabel, () => sendFeedback(body, feedbackToken));
  });
}

// --- one exchange ----------------------------------------------------------------------------

function addUserTurn(text) {
  const turn = element("li", { class: "turn user" });
  turn.append(element("div", { class: "meta" }, "You"), element("div", { class: "text" }, text));
  $("#transcript").append(turn);
  return turn;
}

function newAnswerTurn() {
  const turn = $("#answer-template").content.firstElementChild.cloneNode(true);
  for (const button of turn.querySelectorAll(".thumb")) button.disabled = true;
  $("#transcript").append(turn);
  return turn;
}

function setBusy(busy) {
  $("#send").disabled = busy;
  $("#stop").disabled = !busy;
  $("#regenerate").disabled = busy || !state.lastTurn;
  $("#prompt").setAttribute("aria-busy", String(busy));
}

function requestBody(candidates) {
  const body = { model: "policy", messages: state.history, n: candidates };
  if (state.conversationId) body.conversation_id = state.conversationId;
  return body;
}

async function exchange(userText) {
  const compare = $("#compare").checked;
  const candidates = compare ? Number($("#candidates").value) : 1;
  const historyLength = state.history.length;
  state.history.push({ role: "user", content: userText });
  const userTurn = addUserTurn(userText);
  const turn = compare ? newCompareTurn(candidates) : newAnswerTurn();
  state.lastTurn = { userText, elements: [userTurn, turn], historyLength };
  const texts = new Array(candidates).fill("");
  const versions = new Array(candidates).fill("");
  const finishes = new Array(candidates).fill(null);
  state.controller = new AbortController();
  setBusy(true);
  try {
    const metadata = await streamChat(
      requestBody(candidates),
      (index, text, version, finishReason) => {
        texts[index] += text;
        if (version) versions[index] = version;
        if (finishReason) finishes[index] = finishReason;
        showText(turn, compare, index, texts[index], versions[index], finishes[index]);
      },
      state.controller.signal,
    );
    clearNotice();
    state.conversationId = metadata.conversation_id;
    if (compare) {
      wireComparison(turn, metadata, texts);
    } else {
      state.history.push({ role: "assistant", content: texts[0] });
      wireThumbs(turn, metadata.response_ids[0], metadata.feedback_token);
    }
  } catch (error) {
    if (error.name === "AbortError") {
      $(".feedback-state", turn).textContent = "Stopped: a stopped answer is not recorded, so it cannot be rated.";
      state.history.push({ role: "assistant", content: texts[0] }); // the conversation goes on from it
    } else {
      showNotice(error.message);
      turn.classList.add("failed");
      $(".feedback-state", turn).textContent = "No answer (see the message above).";
      state.history.length = historyLength; // the failed turn is not part of the conversation
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

function showText(turn, compare, index, text, version, finishReason) {
  const target = compare ? turn.querySelectorAll(".candidate")[index] : turn;
  $(".text", target).textContent = text;
  // Say so when the answer was cut at the token limit: a rater should know it is unfinished.
  const cut = finishReason === "length" ? " · cut at the length limit" : "";
  if (version) $(".version", target).textContent = `model ${version}${cut}`;
}

// --- compare mode: n anonymous answers, ranked or voted on -------------------------------------

const LETTERS = "ABCDEFGH";

function newCompareTurn(candidates) {
  const turn = element("li", { class: "turn compare" });
  turn.append(element("div", { class: "meta" }, `Compare ${candidates} answers (anonymous)`));
  const grid = element("div", { class: "candidates", "data-count": String(candidates) });
  for (let i = 0; i < candidates; i++) {
    const card = element("section", { class: "candidate", "aria-label": `Answer ${LETTERS[i]}` });
    card.append(
      element("h3", {}, `Answer ${LETTERS[i]}`),
      element("div", { class: "text" }),
      element("div", { class: "version muted" }),
    );
    grid.append(card);
  }
  turn.append(grid, element("div", { class: "vote" }), element("span", { class: "feedback-state", "aria-live": "polite" }));
  $("#transcript").append(turn);
  return turn;
}

function continueWith(texts, index) {
  state.history.push({ role: "assistant", content: texts[index] });
}

function wireComparison(turn, metadata, texts) {
  const ids = metadata.response_ids;
  const vote = $(".vote", turn);
  const stateLabel = $(".feedback-state", turn);
  if (ids.length === 2) {
    const outcomes = [
      ["a", "A is better"],
      ["b", "B is better"],
      ["tie", "Tie"],
      ["both_bad", "Both are bad"],
    ];
    const buttons = outcomes.map(([outcome, label]) => {
      const button = element("button", { type: "button", class: "outcome" }, label);
      button.addEventListener("click", async () => {
        const body = { kind: "pairwise", response_a: ids[0], response_b: ids[1], outcome };
        const done = await submitting(button, stateLabel, () => sendFeedback(body, metadata.feedback_token));
        if (done) {
          buttons.forEach((b) => (b.disabled = true));
          continueWith(texts, outcome === "b" ? 1 : 0);
        }
      });
      return button;
    });
    vote.append(element("p", {}, "Which answer is better?"), ...buttons);
    buttons[0].focus();
    return;
  }
  // Three or more: order them best first, by dragging or with the Move buttons.
  const list = element("ol", { class: "ranking", "aria-label": "Your ranking, best first" });
  ids.forEach((id, index) => list.append(rankItem(list, id, index)));
  const submit = element("button", { type: "button", class: "submit-ranking" }, "Submit ranking");
  submit.addEventListener("click", async () => {
    const order = [...list.children].map((item) => item.dataset.responseId);
    const body = { kind: "ranking", ranking: order.map((id) => [id]) };
    const done = await submitting(submit, stateLabel, () => sendFeedback(body, metadata.feedback_token));
    if (done) {
      list.querySelectorAll("button").forEach((b) => (b.disabled = true));
      continueWith(texts, ids.indexOf(order[0]));
    }
  });
  vote.append(element("p", {}, "Rank the answers, best first (drag, or use Move up / Move down):"), list, submit);
}

function rankItem(list, responseId, index) {
  const item = element("li", { class: "rank-item", draggable: "true", tabindex: "0" });
  item.dataset.responseId = responseId;
  const label = element("span", { class: "rank-label" }, `Answer ${LETTERS[index]}`);
  const up = element("button", { type: "button", "aria-label": `Move answer ${LETTERS[index]} up` }, "Move up");
  const down = element("button", { type: "button", "aria-label": `Move answer ${LETTERS[index]} down` }, "Move down");
  const move = (step) => {
    const sibling = step < 0 ? item.previousElementSibling : item.nextElementSibling;
    if (!sibling) return;
    if (step < 0) list.insertBefore(item, sibling);
    else list.insertBefore(sibling, item);
    item.focus();
  };
  up.addEventListener("click", () => move(-1));
  down.addEventListener("click", () => move(1));
  item.addEventListener("keydown", (event) => {
    if (event.target !== item) return;
    if (event.key === "ArrowUp") move(-1);
    else if (event.key === "ArrowDown") move(1);
    else return;
    event.preventDefault();
  });
  item.addEventListener("dragstart", (event) => {
    event.dataTransfer.setData("text/plain", responseId);
    item.classList.add("dragging");
  });
  item.addEventListener("dragend", () => item.classList.remove("dragging"));
  item.addEventListener("dragover", (event) => event.preventDefault());
  item.addEventListener("drop", (event) => {
    event.preventDefault();
    const dragged = [...list.children].find((i) => i.dataset.responseId === event.dataTransfer.getData("text/plain"));
    if (dragged && dragged !== item) list.insertBefore(dragged, item);
  });
  item.append(label, up, down);
  return item;
}

// --- status view -----------------------------------------------------------------------------

function table(headers, rows) {
  const node = element("table");
  const head = element("tr");
  headers.forEach((h) => head.append(element("th", { scope: "col" }, h)));
  node.append(head);
  for (const row of rows) {
    const line = element("tr");
    row.forEach((cell) => line.append(element("td", {}, cell == null ? "–" : String(cell))));
    node.append(line);
  }
  return node;
}

const percent = (x) => (x == null ? "–" : `${(100 * x).toFixed(0)}%`);
const number = (x) => (x == null ? "–" : Number(x).toFixed(2));

function stageValue(run, stageName, field) {
  const stage = run.stages.find((s) => s.name === stageName);
  return stage ? stage[field] : undefined;
}

// The policy gate's decision as it was taken: the win rate, the lower confidence bound it
// decided on and the threshold that bound had to clear (older runs recorded the rate only).
function winRate(run) {
  const rate = stageValue(run, "policy_gate", "win_rate");
  const lower = stageValue(run, "policy_gate", "win_rate_lower_bound");
  if (lower == null) return percent(rate);
  const alpha = stageValue(run, "policy_gate", "alpha");
  const threshold = stageValue(run, "policy_gate", "threshold");
  const level = alpha == null ? "lower" : `${(100 * (1 - alpha)).toFixed(0)}%`;
  const needs = threshold == null ? "" : `, must be above ${percent(threshold)}`;
  return `${percent(rate)} (${level} bound ${percent(lower)}${needs})`;
}

// The RM gate's accuracy, the lower bound it decided on (the accuracy's for a first RM, the
// gain's over the promoted RM after) and what that bound had to reach.
function rmAccuracy(run) {
  const accuracy = number(stageValue(run, "rm_gate", "heldout_accuracy"));
  const decidedOn = stageValue(run, "rm_gate", "decided_on");
  if (decidedOn == null) {
    const lower = stageValue(run, "rm_gate", "accuracy_lower_bound");
    return lower == null ? accuracy : `${accuracy} (bound ${number(lower)})`;
  }
  const what = decidedOn === "gain_lower_bound" ? "gain bound" : "bound";
  const bound = number(stageValue(run, "rm_gate", decidedOn));
  return `${accuracy} (${what} ${bound}, must reach ${number(stageValue(run, "rm_gate", "threshold"))})`;
}

const interval = (pair) => (pair ? `[${percent(pair[0])}, ${percent(pair[1])}]` : "–");

// The watch's last look: a canary (or a newly promoted policy) against the version it is
// compared with, on their always-valid thumbs-up intervals, and what it decided.
function watchText(watch) {
  if (!watch) return "The watch has not looked yet.";
  if (watch.kind === "idle") return `Nothing to watch: ${watch.reason}.`;
  const [votes, otherVotes] = watch.votes;
  const head =
    watch.kind === "canary"
      ? `Canary ${watch.version} on ${percent(watch.share)} of the keys for ` +
        `${Math.round(watch.waited_s)} of ${Math.round(watch.max_wait_s)} s, against ${watch.against}`
      : `Promoted ${watch.version} against its parent ${watch.against}`;
  return (
    `${head}: thumbs up ${interval(watch.version_interval)} (${votes} votes) vs ` +
    `${interval(watch.against_interval)} (${otherVotes} votes). Decision: ${watch.decision}.`
  );
}

function renderStatus(status) {
  const unavailable = (part) => element("p", { class: "error" }, `Unavailable: ${part.error}`);
  const serving = status.serving;
  $("#serving").replaceChildren(
    serving.error
      ? unavailable(serving)
      : `Model ${serving.model_version || "(none loaded)"} on ${serving.device} (${serving.dtype})` +
          (serving.canary_version
            ? `; canary ${serving.canary_version} answers ${percent(serving.canary_share)} of the keys`
            : ""),
  );
  const feedback = status.feedback;
  $("#thumbs").replaceChildren(
    feedback.error
      ? unavailable(feedback)
      : feedback.thumbs.length
        ? table(
            ["Version", "Thumbs up", "Thumbs down", "Up ratio"],
            feedback.thumbs.map((t) => [t.model_version, t.thumbs_up, t.thumbs_down, percent(t.up_ratio)]),
          )
        : element("p", {}, "No thumbs yet."),
  );
  const trainer = status.trainer;
  $("#watch").replaceChildren(trainer.error ? unavailable(trainer) : watchText(trainer.watch));
  $("#runs").replaceChildren(
    trainer.error
      ? unavailable(trainer)
      : trainer.runs.length
        ? table(
            ["Run", "Outcome", "Started", "RM accuracy", "Win rate vs served", "Promoted", "Canary share", "Reason"],
            trainer.runs.map((run) => [
              run.id,
              run.status,
              run.created_at ? new Date(run.created_at).toLocaleString() : null,
              rmAccuracy(run),
              winRate(run),
              stageValue(run, "promote", "version"),
              percent(stageValue(run, "promote", "canary_share")),
              run.reason || null,
            ]),
          )
        : element("p", {}, "No runs yet."),
  );
}

async function refreshStatus() {
  try {
    requireKey();
    let response;
    try {
      response = await fetch("/v1/flywheel/status", { headers: { Authorization: `Bearer ${state.key}` } });
    } catch (error) {
      throw unreachable("the gateway", error);
    }
    if (!response.ok) throw await apiError(response, "The gateway");
    renderStatus(await response.json());
    clearNotice();
  } catch (error) {
    showNotice(error.message);
  }
}

function showView(name) {
  $("#chat-view").hidden = name !== "chat";
  $("#status-view").hidden = name !== "status";
  $("#show-chat").setAttribute("aria-pressed", String(name === "chat"));
  $("#show-status").setAttribute("aria-pressed", String(name === "status"));
  if (name === "status") refreshStatus();
}

// --- start -----------------------------------------------------------------------------------

async function loadConfig() {
  try {
    const response = await fetch("/chat/config.json");
    if (!response.ok) throw await apiError(response, "The gateway");
    state.feedbackUrl = (await response.json()).feedback_url;
  } catch (error) {
    showNotice(`The page could not load its settings: ${error.message}`);
  }
}

function send() {
  const text = $("#prompt").value.trim();
  if (!text || state.controller) return;
  $("#prompt").value = "";
  exchange(text);
}

function regenerate() {
  const last = state.lastTurn;
  if (!last || state.controller) return;
  last.elements.forEach((node) => node.remove());
  state.history.length = last.historyLength;
  exchange(last.userText);
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  state.conversationId = null;
  state.lastTurn = null;
  $("#transcript").replaceChildren();
  clearNotice();
  setBusy(false);
  $("#prompt").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  showKeyState();
  loadConfig();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#api-key").value.trim();
    $("#api-key").value = "";
    if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key);
    else sessionStorage.removeItem(KEY_STORAGE);
    showKeyState();
  });
  $("#composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("#stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("#regenerate").addEventListener("click", regenerate);
  $("#new-chat").addEventListener("click", newChat);
  $("#show-chat").addEventListener("click", () => showView("chat"));
  $("#show-status").addEventListener("click", () => showView("status"));
  $("#refresh-status").addEventListener("click", refreshStatus);
  setBusy(false);
});
