/* ipywidgets' HTML manager (embed-amd.js, every @jupyter-widgets/html-manager 1.x release) typesets
 * widget labels with MathJax 2's API, MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]). The book
 * loads MathJax 3, which has no Hub, so each widget label threw "Cannot read properties of undefined
 * (reading 'Queue')". This gives MathJax 3 that one call, mapped onto MathJax.typesetPromise.
 * jupyter-book loads every .js file in _static/ on every page; on pages without math or widgets it does
 * nothing. */
(function () {
  function install() {
    var mj = window.MathJax;
    // Before MathJax 3 has loaded, window.MathJax is its configuration object (no startup yet);
    // MathJax 2 has a Hub of its own.
    if (!mj || mj.Hub || !mj.startup) return;
    mj.Hub = {
      Queue: function () {
        Array.prototype.forEach.call(arguments, function (job) {
          if (Array.isArray(job) && job[0] === "Typeset" && job[2]) {
            mj.startup.promise.then(function () { return mj.typesetPromise([job[2]]); })
              .catch(function (err) { console.warn("MathJax could not typeset a widget label:", err); });
          }
        });
      },
    };
  }
  install();
  // MathJax is loaded with `defer`: it has run by DOMContentLoaded, before the widgets render.
  document.addEventListener("DOMContentLoaded", install);
})();
