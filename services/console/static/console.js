// The console's behaviour beyond plain forms and links, which all work without it: live
// instance updates (server-sent events), the launch estimate, copy buttons, confirmations and
// the serverless job tester. An ES module served from the package; no framework, no build.

const announce = (id, text) => {
  const note = document.getElementById(id);
  if (note) note.textContent = text;
};

const money = (value, digits) => `$${value.toFixed(digits)}`;

function liveInstances(root) {
  const source = new EventSource(root.dataset.live);
  source.addEventListener("instance", (event) => {
    const data = JSON.parse(event.data);
    const scopes = root.matches(`[data-instance="${data.id}"]`)
      ? [root]
      : root.querySelectorAll(`[data-instance="${data.id}"]`);
    for (const scope of scopes) {
      const status = scope.querySelector('[data-field="status"]');
      if (status && status.textContent !== data.status) {
        status.textContent = data.status;
        status.className = `status status-${data.status.toLowerCase()}`;
        announce("live-note", `Instance ${data.id.slice(0, 8)} is now ${data.status}.`);
      }
      const cost = scope.querySelector('[data-field="cost"]');
      if (cost) cost.textContent = money(data.costToDate, 4);
      const desired = scope.querySelector('[data-field="desired"]');
      if (desired) desired.textContent = data.desiredStatus;
      for (const form of scope.querySelectorAll("form[data-action]")) {
        form.hidden = !data.actions.includes(form.dataset.action);
      }
      const reason = scope.querySelector('[data-field="reason"]');
      if (reason) {
        const text = data.failureReason || data.stopReason || "";
        reason.textContent = text;
        reason.hidden = !text;
      }
      const urls = scope.querySelector('[data-field="urls"]');
      if (urls && data.urls.length) {
        urls.replaceChildren(...data.urls.map((u) => {
          const code = document.createElement("code");
          code.textContent = `${u} `;
          return code;
        }));
      }
    }
  });
  source.addEventListener("gone", (event) => {
    for (const row of root.querySelectorAll(`[data-instance="${event.data}"]`)) row.remove();
  });
  source.onerror = () => announce("live-note", "Live updates paused; retrying…");
  source.onopen = () => announce("live-note", "");
}

function estimate(form) {
  const output = document.getElementById("estimate");
  let pending = null;
  const update = async () => {
    const params = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (key !== "_csrf_token" && typeof value === "string" && value.trim()) params.append(key, value);
    }
    const response = await fetch(`${form.dataset.estimate}?${params}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const body = await response.json();
    output.textContent = body.perHourMicros == null
      ? (body.problem || "—")
      : `${money(body.perHourMicros / 1e6, 3)} per hour`;
  };
  form.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(update, 200);
  });
}

async function copy(button) {
  const target = document.getElementById(button.dataset.copy);
  const text = target.value ?? target.textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    if (target.select) target.select();
    document.execCommand("copy");
  }
  announce("copy-note", "Copied.");
}

function jobTester(form) {
  const output = document.getElementById("job-output");
  const token = form.querySelector('[name="_csrf_token"]').value;
  const show = (body) => { output.textContent = JSON.stringify(body, null, 2); };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let input;
    try {
      input = JSON.parse(form.elements.input.value);
    } catch (error) {
      output.textContent = `The input is not JSON: ${error.message}`;
      return;
    }
    output.textContent = "Running…";
    const response = await fetch(form.dataset.runsync, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrftoken": token },
      body: JSON.stringify({ input }),
    });
    let body = await response.json();
    show(body);
    while (body.id && (body.status === "IN_QUEUE" || body.status === "IN_PROGRESS")) {
      await new Promise((done) => setTimeout(done, 2000));
      body = await (await fetch(form.dataset.status + body.id, { credentials: "same-origin" })).json();
      show(body);
    }
  });
}

for (const root of document.querySelectorAll("[data-live]")) liveInstances(root);
const launchForm = document.getElementById("launch-form");
if (launchForm) estimate(launchForm);
for (const button of document.querySelectorAll("[data-copy]")) {
  button.addEventListener("click", () => copy(button));
}
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}
const tester = document.getElementById("job-tester");
if (tester) jobTester(tester);
