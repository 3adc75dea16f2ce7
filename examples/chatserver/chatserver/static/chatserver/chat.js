/*
 * Page helpers shared by the example's chat pages: the message list, the
 * connection status badge and the send form. The websocket itself is
 * ws4redis.js; this file only draws what it reports.
 */
(function (root) {
    'use strict';

    var doc = root.document;

    function status(state, text) {
        var badge = doc.getElementById('ws-status');
        badge.dataset.state = state;
        badge.textContent = text;
    }

    function append(text, kind) {
        var item = doc.createElement('li');
        item.className = 'message' + (kind ? ' ' + kind : '');
        item.textContent = text;
        doc.getElementById('messages').appendChild(item);
        item.scrollIntoView({block: 'nearest'});
    }

    function showError(text) {
        var box = doc.getElementById('send-error');
        box.textContent = text;
        box.hidden = !text;
    }

    var CANNOT_REACH = 'Cannot reach the server: the message was not sent. The page reconnects by itself; ' +
        'try again in a moment.';
    var LOGGED_OUT = 'You were logged out: reload the page to log in again. The message was not sent.';

    /*
     * Run send(form) on submit. send returns (or resolves to) null when the message went out, or
     * the reason it did not, which is shown as it is; the typed text stays until it was sent.
     */
    function onSubmit(form, send) {
        form.addEventListener('submit', function (evt) {
            evt.preventDefault();
            var input = form.elements.message;
            if (!input.value.trim()) {
                return;
            }
            Promise.resolve().then(function () {
                return send(form);
            }).then(function (problem) {
                if (problem) {
                    showError(problem);
                } else {
                    input.value = '';
                    showError('');
                }
            }, function (err) {
                showError('The message was not sent: ' + err);
            });
        });
    }

    /* send for a websocket: null when handed to the socket, else why not. */
    function sendOver(ws4redis) {
        return function (form) {
            return ws4redis.send_message(form.elements.message.value) ? null : CANNOT_REACH;
        };
    }

    /*
     * POST the form to its action; resolve to null when the server took the message, else to
     * what went wrong in words: the server's own error, a lost login, an unreachable server.
     */
    function postForm(form) {
        return root.fetch(form.action, {
            method: 'POST',
            body: new root.FormData(form),
            credentials: 'same-origin',
            headers: {'Accept': 'application/json'}
        }).then(function (response) {
            if (response.redirected) {
                return LOGGED_OUT;  // login_required sent the request to the login page
            }
            var type = response.headers.get('Content-Type') || '';
            if (type.indexOf('application/json') < 0) {
                return response.status === 403
                    ? 'The server refused the message (403, the page is too old?): reload the page.'
                    : 'The server answered ' + response.status + ' ' + response.statusText + '.';
            }
            return response.json().then(function (body) {
                return response.ok ? null : 'Not sent: ' + (body.error || 'the server answered ' + response.status);
            });
        }, function () {
            return CANNOT_REACH;
        });
    }

    /* The badge counts down while a reconnect is pending: "reconnecting in 3 s…". */
    var countdown = null;

    function stopCountdown() {
        if (countdown !== null) {
            root.clearInterval(countdown);
            countdown = null;
        }
    }

    function reconnecting(delay) {
        stopCountdown();
        var due = Date.now() + delay;
        function show() {
            var seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
            status('reconnecting', 'disconnected, reconnecting in ' + seconds + ' s\u2026');
        }
        show();
        countdown = root.setInterval(show, 250);
    }

    root.ChatUI = {
        append: append,
        onSubmit: onSubmit,
        postForm: postForm,
        sendOver: sendOver,
        connecting: function (attempt) {
            stopCountdown();
            status('connecting', attempt > 1 ? 'reconnecting (attempt ' + attempt + ')\u2026' : 'connecting\u2026');
        },
        connected: function () {
            // Counting opens lets a page (or a test) tell a reconnect from the first connect.
            var badge = doc.getElementById('ws-status');
            badge.dataset.connections = String(Number(badge.dataset.connections || 0) + 1);
            status('connected', 'connected');
        },
        disconnected: function () { status('disconnected', 'disconnected'); },
        reconnecting: reconnecting
    };
}(window));
