// When an htmx request fails (403, 404, 5xx), say so above the page instead of doing nothing:
// the message is the one the error page shows (its role="alert" element), or the status.
document.addEventListener("htmx:responseError", (event) => {
  const xhr = event.detail.xhr;
  let message = "";
  try {
    const page = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
    const alert = page.querySelector("main [role=alert]");
    message = alert ? alert.textContent.trim() : "";
  } catch (error) {
    message = "";
  }
  if (!message) {
    message = `The request failed (${xhr.status || "no answer"}). Reload the page and try again.`;
  }
  const main = document.querySelector("main");
  if (!main) return;
  let box = document.getElementById("request-error");
  if (!box) {
    box = document.createElement("p");
    box.id = "request-error";
    box.className = "banner error";
    box.setAttribute("role", "alert");
    main.prepend(box);
  }
  box.textContent = message;
});
