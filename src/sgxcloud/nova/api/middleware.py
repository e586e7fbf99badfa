"""WSGI middleware for nova-api: refuse live migration and suspend of SGX servers.

Nova refuses such actions for AMD SEV servers in ``nova.compute.api``
(``reject_sev_instances``) with 409 Conflict.  An out-of-tree plugin cannot
decorate that code, so this filter does the same one step earlier, in the
API pipeline; the compute driver refuses again as defence in depth (for
callers that reach the conductor some other way).

api-paste.ini: add ``sgx_guard`` right before ``osapi_compute_app_v21`` in
both ``openstack_compute_api_v21*`` pipelines, and::

    [filter:sgx_guard]
    paste.filter_factory = sgxcloud.nova.api.middleware:SGXActionGuard.factory
"""

from __future__ import annotations

import json
import re

import webob.dec
import webob.exc
from nova import exception
from nova.api import wsgi as base_wsgi
from nova.api.openstack import wsgi
from oslo_log import log as logging

from sgxcloud.nova.requirements import EPC_CANNOT_MOVE, sgx_request_from_flavor

LOG = logging.getLogger(__name__)

_SERVER_ACTION = re.compile(r"/servers/(?P<server>[0-9a-fA-F-]{32,36})/action/?$")

# Server action -> how the refusal names it.
REFUSED_ACTIONS = {
    "os-migrateLive": "Live migration",
    "suspend": "Suspend",
}


class SGXActionGuard(base_wsgi.Middleware):
    def __init__(self, application, **local_config) -> None:
        super().__init__(application)
        self._compute_api = None

    @property
    def compute_api(self):
        if self._compute_api is None:  # built on first use: it starts RPC clients
            from nova.compute import api as compute

            self._compute_api = compute.API()
        return self._compute_api

    @webob.dec.wsgify(RequestClass=wsgi.Request)
    def __call__(self, req: wsgi.Request):
        refusal = self._refusal(req)
        if refusal:
            return wsgi.Fault(webob.exc.HTTPConflict(explanation=refusal))
        return self.application

    def _refusal(self, req: wsgi.Request) -> str | None:
        if req.method != "POST":
            return None
        match = _SERVER_ACTION.search(req.path_info)
        if not match:
            return None
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            return None  # Nova itself answers malformed bodies
        if not isinstance(body, dict):
            return None
        action = next((REFUSED_ACTIONS[key] for key in body if key in REFUSED_ACTIONS), None)
        if action is None:
            return None
        context = req.environ.get("nova.context")
        if context is None:
            return None
        try:
            instance = self.compute_api.get(context, match["server"], expected_attrs=["flavor"])
        except exception.NovaException:
            return None  # not found / not visible: Nova answers as usual
        if not sgx_request_from_flavor(instance.flavor).wants_sgx:
            return None
        LOG.info("Refusing %s of SGX server %s", action.lower(), instance.uuid)
        return EPC_CANNOT_MOVE.format(action=action)
