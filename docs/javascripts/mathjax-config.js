// MathJax 3, served by the site itself (assets/mathjax/, copied from the django-static-mathjax
// wheel by scripts/mkdocs_hooks.py): no CDN, so the book renders its formulas offline.
//
// Two sources of math: Markdown pages (pymdownx.arithmatex, generic mode: \( \) and \[ \]
// inside .arithmatex elements) and notebooks rendered by mkdocs-jupyter ($ $ and $$ $$ inside
// .jupyter-wrapper). Only those elements are typeset, so a stray "$" in prose stays a dollar.
let mathjaxReady = false;
let mathjaxQueue = Promise.resolve(); // typeset calls must not overlap (autoloaded extensions retry)

function typesetBookMath() {
  if (!mathjaxReady) {
    return mathjaxQueue; // startup.pageReady below typesets the first page
  }
  mathjaxQueue = mathjaxQueue
    .then(() => {
      const roots = Array.from(document.querySelectorAll(".arithmatex, .jupyter-wrapper"));
      if (roots.length === 0) {
        return undefined;
      }
      MathJax.typesetClear();
      MathJax.texReset();
      return MathJax.typesetPromise(roots);
    })
    .then(
      () => {
        document.body.dataset.bookMath = "typeset"; // for tests/test_browser.py: math is done
      },
      (err) => {
        document.body.dataset.bookMath = "error";
        console.error("MathJax:", err);
      },
    );
  return mathjaxQueue;
}

window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "ams",
  },
  options: {
    ignoreHtmlClass: "tex2jax_ignore",
    processHtmlClass: "tex2jax_process",
  },
  startup: {
    typeset: false, // only .arithmatex and .jupyter-wrapper, see typesetBookMath
    pageReady: () =>
      MathJax.startup.defaultPageReady().then(() => {
        mathjaxReady = true;
        return typesetBookMath();
      }),
  },
};

// Material for MkDocs publishes each page load on document$ (also with instant navigation).
if (typeof document$ !== "undefined") {
  document$.subscribe(() => typesetBookMath());
}
