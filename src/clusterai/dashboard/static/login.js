"use strict";
document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  const token = document.getElementById("token").value.trim();
  const answer = await fetch("/login", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({token}),
  });
  if (answer.ok) {
    window.location.assign("/");
  } else {
    const body = await answer.json().catch(() => ({}));
    error.textContent = body.error || `sign-in failed (${answer.status})`;
  }
});
