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
        if (box) {
            box.textContent = text;
            box.hidden = !text;
        } else if (text) {
            append(text, 'error');
        }
    }

    /* Run send(form) on submit; keep the typed text unless it was sent. */
    function onSubmit(form, send) {
        form.addEventListener('submit', function (evt) {
            evt.preventDefault();
            var input = form.elements.message;
            if (!input.value.trim()) {
                return;
            }
            Promise.resolve(send(form)).then(function (sent) {
                if (sent) {
                    input.value = '';
                    showError('');
                } else {
                    showError('Not connected: the message was not sent, try again in a moment.');
                }
            });
        });
    }

    /* POST the form to its action with fetch; resolve to whether the server accepted it. */
    function postForm(form) {
        return root.fetch(form.action, {
            method: 'POST',
            body: new root.FormData(form),
            credentials: 'same-origin',
            headers: {'Accept': 'application/json'}
        }).then(function (response) {
            return response.json().then(function (body) {
                if (!response.ok) {
                    showError(body.error || ('the server answered ' + response.status));
                    return false;
                }
                return true;
            });
        });
    }

    root.ChatUI = {
        append: append,
        onSubmit: onSubmit,
        postForm: postForm,
        connecting: function (attempt) {
            status('connecting', attempt > 1 ? 'reconnecting (attempt ' + attempt + ')\u2026' : 'connecting\u2026');
        },
        connected: function () {
            // Counting opens lets a page (or a test) tell a reconnect from the first connect.
            var badge = doc.getElementById('ws-status');
            badge.dataset.connections = String(Number(badge.dataset.connections || 0) + 1);
            status('connected', 'connected');
        },
        disconnected: function () { status('disconnected', 'disconnected'); }
    };
}(window));
