// botsq web console: ticking files and the run menu's command line preview.
// Everything works without this script; it only makes ticking many files and reading the job easier.
(function () {
  "use strict";

  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  function listForm(form) {
    var all = form.querySelector("input[data-select-all]");
    var boxes = Array.prototype.slice.call(form.querySelectorAll("tr[data-id] input[name=ids]"));
    var counter = form.querySelector("[data-ticked]");
    var scope = form.querySelector("input[name=scope]");
    function update() {
      var n = boxes.filter(function (b) { return b.checked; }).length;
      boxes.forEach(function (b) { b.closest("tr").classList.toggle("selected", b.checked); });
      if (counter) counter.textContent = scope && scope.checked ? counter.dataset.matching : n + " ticked";
      if (all) { all.checked = n > 0 && n === boxes.length; all.indeterminate = n > 0 && n < boxes.length; }
    }
    if (all) all.addEventListener("change", function () {
      boxes.forEach(function (b) { b.checked = all.checked; });
      update();
    });
    boxes.forEach(function (b) { b.addEventListener("change", update); });
    if (scope) scope.addEventListener("change", update);
    update();
  }

  function runForm(form) {
    var out = document.querySelector("[data-cmdline]");
    if (!out) return;
    function update() {
      var cmd = form.querySelector("input[name=command]:checked");
      var prio = form.querySelector("select[name=priority]");
      var routes = Array.prototype.slice.call(form.querySelectorAll("input[name=routes]:checked"))
        .map(function (r) { return r.value; });
      // a Bots site types its route names (Bots has them, not routes.toml): split as the server does
      Array.prototype.forEach.call(form.querySelectorAll("input[name=routes][type=text]"), function (t) {
        routes = routes.concat(t.value.split(/[\s,]+/).filter(function (w) { return w; }));
      });
      var words = ["bots-job2queue", "-p" + (prio ? prio.value : "5")];
      if (cmd && cmd.dataset.job) { words.push(cmd.value); }
      else { words.push("bots-engine", "--" + (cmd ? cmd.value : "new")); words = words.concat(routes); }
      out.textContent = words.join(" ");
    }
    form.addEventListener("change", update);
    form.addEventListener("input", update);
    update();
  }

  ready(function () {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-list]"), listForm);
    var rf = document.getElementById("run-form");
    if (rf) runForm(rf);
  });
})();
