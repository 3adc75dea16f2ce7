/*
 * The live dashboard: draws each JSON update of manage.py dashboard_feed. Nothing here talks
 * to the server; ws4redis.js hands every update to update().
 */
(function (root) {
    'use strict';

    var HISTORY = 120;  // points of each sparkline: a minute at two updates a second
    var STALE_AFTER = 5000;  // ms without an update before the page says the feed looks stopped

    function Dashboard(doc) {
        var received = 0;
        var lastUpdate = 0;
        var series = {};
        var rows = {};

        function set(id, text) {
            doc.getElementById(id).textContent = text;
        }

        function sparkline(values) {
            var min = Math.min.apply(null, values), max = Math.max.apply(null, values);
            var span = max - min || 1;
            var points = values.map(function (value, i) {
                var x = (i / (HISTORY - 1)) * 120;
                var y = 28 - ((value - min) / span) * 26;
                return x.toFixed(1) + ',' + y.toFixed(1);
            });
            return '<svg viewBox="0 0 120 30" class="spark"><polyline points="' + points.join(' ') + '"/></svg>';
        }

        function row(symbol) {
            if (!rows[symbol]) {
                var tr = doc.createElement('tr');
                tr.dataset.symbol = symbol;
                tr.innerHTML = '<td class="symbol"></td><td class="price"></td><td class="change"></td><td class="trend"></td>';
                tr.querySelector('.symbol').textContent = symbol;
                doc.querySelector('#ticker tbody').appendChild(tr);
                rows[symbol] = tr;
                series[symbol] = [];
            }
            return rows[symbol];
        }

        function drawQuote(symbol, quote) {
            var tr = row(symbol);
            var values = series[symbol];
            values.push(quote.price);
            if (values.length > HISTORY) {
                values.shift();
            }
            tr.querySelector('.price').textContent = quote.price.toFixed(2);
            var change = tr.querySelector('.change');
            change.textContent = (quote.change >= 0 ? '+' : '') + quote.change.toFixed(2) + ' %';
            change.className = 'change ' + (quote.change >= 0 ? 'up' : 'down');
            tr.querySelector('.trend').innerHTML = sparkline(values);
        }

        function update(message) {
            var data;
            try {
                data = JSON.parse(message);
            } catch (err) {
                return;  // not an update of the feed: nothing to draw
            }
            received += 1;
            lastUpdate = Date.now();
            doc.body.dataset.seq = String(data.seq);
            set('received', String(received));
            set('watching', String(data.watching));
            set('latency', Math.max(0, Date.now() - data.sent_at).toFixed(0));
            set('redis-ops', String(data.redis.ops_per_sec));
            set('redis-clients', String(data.redis.clients));
            set('load', data.load.join(' '));
            Object.keys(data.quotes).sort().forEach(function (symbol) {
                drawQuote(symbol, data.quotes[symbol]);
            });
            doc.getElementById('stale').hidden = true;
        }

        root.setInterval(function () {
            doc.getElementById('stale').hidden = !lastUpdate || Date.now() - lastUpdate < STALE_AFTER;
        }, 1000);

        return {update: update};
    }

    root.Dashboard = Dashboard;
}(window));
