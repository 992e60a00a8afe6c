// The alarm for a new critical alert: a beep made with WebAudio (no sound file) and a
// desktop notification. Browsers allow audio only after a user gesture, so the audio
// context is created on the first click (sign-in counts) and resumed later.

const SOUND_KEY = "healthmon.sound";
let ctx = null;
let soundOn = localStorage.getItem(SOUND_KEY) !== "off";

/** Counters the end-to-end test reads (window.healthmonAlarm). */
export const alarmLog = { beeps: 0, notifications: 0, last: null };
window.healthmonAlarm = alarmLog;

export function unlockAudio() {
  const AC = window.AudioContext || window.webkitAudioContext;
  if (!AC) return;
  if (!ctx) ctx = new AC();
  if (ctx.state === "suspended") ctx.resume().catch(() => {});
}

document.addEventListener("click", unlockAudio, { capture: true });
document.addEventListener("keydown", unlockAudio, { capture: true });

export function isSoundOn() {
  return soundOn;
}

export function setSound(on) {
  soundOn = on;
  localStorage.setItem(SOUND_KEY, on ? "on" : "off");
}

/** Three short two-tone beeps, loud enough to be heard across a duty room. */
export function beep() {
  alarmLog.beeps += 1;
  if (!soundOn) return;
  unlockAudio();
  if (!ctx) return;
  const t0 = ctx.currentTime + 0.02;
  for (let i = 0; i < 3; i++) {
    const start = t0 + i * 0.35;
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "square";
    osc.frequency.setValueAtTime(880, start);
    osc.frequency.setValueAtTime(660, start + 0.12);
    gain.gain.setValueAtTime(0.0001, start);
    gain.gain.exponentialRampToValueAtTime(0.25, start + 0.01);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.25);
    osc.connect(gain).connect(ctx.destination);
    osc.start(start);
    osc.stop(start + 0.26);
  }
}

export function notificationState() {
  if (!("Notification" in window)) return "unsupported";
  return Notification.permission; // "default" | "granted" | "denied"
}

export async function requestNotifications() {
  if (!("Notification" in window)) return "unsupported";
  return Notification.requestPermission();
}

/** Show a desktop notification; clicking it focuses the console on `onClickHash`. */
export function desktopNotify(title, body, onClickHash, tag) {
  alarmLog.notifications += 1;
  alarmLog.last = { title, body };
  if (notificationState() !== "granted") return;
  try {
    const n = new Notification(title, { body, tag, requireInteraction: true });
    n.onclick = () => {
      window.focus();
      if (onClickHash) location.hash = onClickHash;
      n.close();
    };
  } catch {
    // Some platforms allow notifications only from a service worker; the beep still sounds.
  }
}
