// The page drives the jobs API: POST /v1/jobs, then its server-sent events over fetch (EventSource cannot send
// the Authorization header), then the gallery. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { tab: "generate", images: [], job: null };
const keyBox = $("api-key");
keyBox.value = localStorage.getItem("internvlu-key") || "";
keyBox.addEventListener("change", () => localStorage.setItem("internvlu-key", keyBox.value));

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (keyBox.value) h.Authorization = "Bearer " + keyBox.value;
  return h;
}

async function failure(response) {
  try { return (await response.json()).error.message; } catch { return `HTTP ${response.status}`; }
}

// ---- tabs and inputs ----------------------------------------------------------------------------------

const PLACEHOLDERS = { generate: "Describe the image you want", edit: "Say what to change", ask: "Ask about the image(s), or just ask" };
const VERBS = { generate: "Generate", edit: "Edit", ask: "Ask" };

function showTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll("[role=tab]")) button.setAttribute("aria-selected", button.dataset.tab === tab);
  $("drop").hidden = tab === "generate";
  $("image-settings").hidden = tab === "ask";
  $("prompt").placeholder = PLACEHOLDERS[tab];
  $("go").textContent = VERBS[tab];
}
for (const button of document.querySelectorAll("[role=tab]")) button.addEventListener("click", () => showTab(button.dataset.tab));

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function addFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    const url = await readAsDataURL(file);
    state.images.push(url);
    const thumb = document.createElement("img");
    thumb.src = url;
    thumb.alt = file.name;
    $("thumbs").append(thumb);
  }
}
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
$("file").addEventListener("change", (e) => addFiles(e.target.files));

// ---- a job ------------------------------------------------------------------------------------------

function request() {
  const body = { kind: state.tab, prompt: $("prompt").value };
  if (state.tab !== "generate") body.images = state.images.slice();
  if (state.tab !== "ask") {
    if ($("size").value.trim()) body.size = $("size").value.trim();
    if ($("steps").value) body.steps = Number($("steps").value);
    if ($("seed").value) body.seed = Number($("seed").value);
    if ($("cot").checked) body.cot = true;
  }
  return body;
}

// Server-sent events read from a fetch body: yields {event, data} as each blank-line-terminated block arrives.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      yield { event, data: JSON.parse(data) };
    }
  }
}

function busy(on) {
  $("go").disabled = on;
  $("cancel").hidden = !on;
  $("progress").hidden = !on;
}

function say(text) { $("status").textContent = text; }

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function run(body) {
  showError("");
  $("thoughts").textContent = "";
  $("preview").removeAttribute("src");
  $("live").hidden = body.kind === "generate" && !body.cot;
  $("progress").value = 0;
  busy(true);
  say("submitting");
  try {
    const submitted = await fetch("/v1/jobs", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    if (!submitted.ok) throw new Error(await failure(submitted));
    state.job = (await submitted.json()).id;
    const stream = await fetch(`/v1/jobs/${state.job}/events`, { headers: headers(false) });
    if (!stream.ok) throw new Error(await failure(stream));
    let answer = "";
    for await (const { event, data } of events(stream)) {
      if (event === "queued") say(`queued: position ${data.queue_position}`);
      else if (event === "running") say(body.kind === "ask" ? "answering" : "working");
      else if (event === "step") {
        $("live").hidden = false;
        $("progress").value = ((data.image - 1) + data.step / data.steps) / data.images;
        say(`image ${data.image}/${data.images}: step ${data.step}/${data.steps}`);
        if (data.preview) $("preview").src = data.preview;
      } else if (event === "thought") {
        $("thoughts").textContent += data.text;
      } else if (event === "token") {
        answer += data.text;
        $("thoughts").textContent = answer;
      } else if (event === "image") {
        await addImageCard(data, body);
      } else if (event === "done") {
        if (data.kind === "ask") addAnswerCard(data, body);
        $("progress").value = 1;
        say("done");
      } else if (event === "failed" || event === "cancelled") {
        say(event);
        if (event === "failed") showError(data.message);
      }
    }
  } catch (error) {
    say("");
    showError(error.message);
  } finally {
    state.job = null;
    busy(false);
  }
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (state.tab !== "generate" && state.tab !== "ask" && state.images.length === 0) {
    showError("drop an image to edit first");
    return;
  }
  run(request());
});

$("cancel").addEventListener("click", async () => {
  if (state.job) await fetch(`/v1/jobs/${state.job}/cancel`, { method: "POST", headers: headers(false) });
});

// ---- the gallery ----------------------------------------------------------------------------------------

function card(title, recipe, body) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  node.querySelector(".title").textContent = title;
  node.querySelector(".recipe").textContent = JSON.stringify(recipe, null, 2);
  node.querySelector(".replay").addEventListener("click", () => {
    showTab(body.kind);
    $("prompt").value = body.prompt;
    run(body);
  });
  $("gallery").prepend(node);
  return node;
}

async function addImageCard(item, body) {
  const recipe = item.result;
  // The same request with the seed that was drawn, so a replay makes the same image.
  const again = { ...body, seed: item.seed, size: `${recipe.settings.width}x${recipe.settings.height}`,
                  steps: recipe.settings.steps };
  const node = card(`${recipe.command}: ${recipe.prompt} (seed ${item.seed})`, recipe, again);
  node.querySelector(".where").textContent = item.path;
  const image = await fetch(`/v1/files/${item.id}`, { headers: headers(false) });
  if (image.ok) node.querySelector("img").src = URL.createObjectURL(await image.blob());
  node.querySelector("img").alt = recipe.prompt;
}

function addAnswerCard(result, body) {
  const node = card(`ask: ${result.question}`, result, body);
  node.querySelector("img").remove();
  const answer = node.querySelector(".answer");
  answer.hidden = false;
  answer.textContent = result.answer;
  node.querySelector(".where").remove();
}

// ---- start ----------------------------------------------------------------------------------------------

showTab("generate");
fetch("/v1/models", { headers: headers(false) }).then(async (r) => {
  $("model").textContent = r.ok ? `model: ${(await r.json()).data[0].id}` : "enter the API key";
});
