// edgefleet dashboard: the action buttons (promote, roll back, resume, sync node), shown
// only to users whose role allows them there. Each asks for a second click to confirm.
"use strict";
const CONFIRM_MS = 5000;
let confirming = null; // "action:target" awaiting its second click (survives re-renders)

function actionButton(action, label, target, canAct) {
  if (!canAct) return null;
  const key = `${action}:${target}`;
  const b = el("button", { type: "button", class: "act", "data-action": action, "data-target": target },
    confirming === key ? `confirm ${label}?` : label);
  if (confirming === key) b.classList.add("confirm");
  b.addEventListener("click", () => act(b, action, label, target));
  return b;
}

function notice(text, bad = false) {
  const n = $("#notice");
  n.textContent = text;
  n.className = bad ? "bad" : "good";
  n.hidden = false;
}

async function act(button, action, label, target) {
  const key = `${action}:${target}`;
  if (confirming !== key) {
    confirming = key;
    button.textContent = `confirm ${label}?`;
    button.classList.add("confirm");
    setTimeout(() => { if (confirming === key) { confirming = null; route(); } }, CONFIRM_MS);
    return;
  }
  confirming = null;
  button.disabled = true;
  const path = action === "sync"
    ? `/api/v1/nodes/${encodeURIComponent(target)}/sync`
    : `/api/v1/stages/${encodeURIComponent(target)}/${action}`;
  try {
    await api(path, { method: "POST", body: action === "sync" ? undefined : { reason: `${label} from the dashboard` } });
    notice(`${label} ${target}: done`);
  } catch (e) {
    notice(`${label} ${target}: ${e.message}`, true);
  }
  route();
}

function stageActions(st) {
  const can = me.may_operate.includes(st.name);
  const buttons = [
    st.promote_from ? actionButton("promote", "promote", st.name, can) : null,
    st.head ? actionButton("rollback", "roll back", st.name, can) : null,
    st.paused ? actionButton("resume", "resume", st.name, can) : null,
  ].filter(Boolean);
  return buttons.length ? el("span", { class: "actions" }, ...buttons) : "–";
}
