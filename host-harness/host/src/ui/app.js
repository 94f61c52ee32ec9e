// The admin page's only script: the integration users' + and x buttons. Without it, the form
// still works (it always offers one empty row).
document.addEventListener("click", (e) => {
  const t = e.target;
  if (t.matches("button.add-user")) {
    e.preventDefault();
    const tpl = document.getElementById("user-row");
    document.getElementById("users").appendChild(tpl.content.cloneNode(true));
  } else if (t.matches("button.remove-user")) {
    e.preventDefault();
    t.closest("tr").remove();
  }
});
