// Loaded after require.js and before embed-amd.js (see _config.yml: nb_ipywidgets_js).
// embed-amd.js defines its AMD modules inline and looks for its assets (the icon font) in the folder of each
// module's URL, which RequireJS otherwise resolves beside the page (notebooks/@jupyter-widgets/...). Mapping the
// module names onto embed-amd.js itself points them at this folder, wherever the book is served from.
(function () {
  var here = new URL("embed-amd", document.currentScript.src).href;
  var paths = {};
  ["@jupyter-widgets/base", "@jupyter-widgets/base7", "@jupyter-widgets/controls", "@jupyter-widgets/controls7",
   "@jupyter-widgets/html-manager", "@jupyter-widgets/html-manager/dist/libembed-amd"].forEach(function (name) {
    paths[name] = here;
  });
  window.require.config({paths: paths});
})();
