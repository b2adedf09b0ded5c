// Draws the usage charts from the JSON the page embeds; redraws after an htmx swap.
(function () {
  "use strict";
  var charts = [];
  var palette = ["#2459d6", "#067647", "#b54708", "#7a2e9e", "#0e7c86", "#b42318", "#5b6470", "#c11574"];

  // Costs are whole micro-dollars, so six decimals show them exactly (four made the axis of a
  // small day read "$0.0001, $0.0001, $0, $0").
  function dollars(micros) {
    return "$" + (micros / 1e6).toLocaleString(undefined, { maximumFractionDigits: 6 });
  }

  function stacked(id, data, metric, format) {
    var el = document.getElementById(id);
    if (!el) return;
    charts.push(new Chart(el, {
      type: "bar",
      data: {
        labels: data.days,
        datasets: data.series.map(function (entry, i) {
          return { label: entry.label, data: entry[metric], backgroundColor: palette[i % palette.length] };
        })
      },
      options: {
        animation: false,
        scales: { x: { stacked: true }, y: { stacked: true, ticks: format ? { callback: format } : {} } },
        plugins: { tooltip: format ? { callbacks: { label: function (c) { return c.dataset.label + ": " + format(c.raw); } } } : {} }
      }
    }));
  }

  function draw() {
    charts.forEach(function (c) { c.destroy(); });
    charts = [];
    var source = document.getElementById("usage-chart-data");
    if (!source || typeof Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    stacked("chart-tokens", data, "tokens");
    stacked("chart-requests", data, "requests");
    stacked("chart-cost", data, "cost_micros", dollars);
    var latency = document.getElementById("chart-latency");
    if (latency) {
      charts.push(new Chart(latency, {
        type: "line",
        data: {
          labels: data.days,
          datasets: [
            { label: "p50", data: data.p50, borderColor: palette[0], spanGaps: true },
            { label: "p95", data: data.p95, borderColor: palette[2], spanGaps: true }
          ]
        },
        options: { animation: false }
      }));
    }
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
